"""PPO over trials, the algorithm-neutral part: GAE, returns, the clipped surrogate, value
losses, the LR schedule and one guarded optimiser step. Imports no network; each algorithm
builds its own batch and update from these.

Index convention (as rlax): for step t, `next_values[t]` is the value the TD error bootstraps
from after step t (already 0 after a true termination) and `cut[t]` stops the advantage
recursion after step t:

    delta_t = r_t + gamma * next_values[t] - v_t
    A_t     = delta_t + gamma * lambda * (1 - cut[t]) * A_{t+1}
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value

from trmrl import distributed
from trmrl.config import PPOConfig
from trmrl.errors import DivergenceError
from trmrl.optim import gradient_step
from trmrl.rollout import Rollout


def gae(rewards: Tensor, values: Tensor, next_values: Tensor, cut: Tensor, gamma: float, lam: float) -> Tensor:
    """Generalised advantage estimates; all arguments and the result are (T, B)."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    keep = (~cut).to(rewards.dtype)
    for t in reversed(range(len(rewards))):
        delta = rewards[t] + gamma * next_values[t] - values[t]
        running = delta + gamma * lam * keep[t] * running
        advantages[t] = running
    return advantages


def discounted_returns(rewards: Tensor, values: Tensor, next_values: Tensor, cut: Tensor, gamma: float) -> Tensor:
    """R_t = r_t + gamma R_{t+1}, ending at a cut with r_t + gamma next_values[t]: GAE with
    lambda = 1 plus the values. (T, B)."""
    return gae(rewards, values, next_values, cut, gamma, 1.0) + values


def bootstrap_targets(rollout: Rollout, across_episodes: bool, bootstrap_truncation: bool) -> tuple[Tensor, Tensor]:
    """(next_values, cut), each (T, B), for `gae` from a rollout.

    Inside a trial the next value is V of the next step, also across an inner episode boundary
    when `across_episodes` (the paper: the trial is one episode of the meta-MDP). Where the
    recursion is cut by the task (a trial end, or an episode end when not `across_episodes`), a
    true termination bootstraps from 0 and a time limit from V(final observation) if
    `bootstrap_truncation`, else from 0 (the original code). Where the rollout stops inside a
    trial, the trial is not over: it bootstraps from V of the next input (`cut_values`), as if
    the rollout had gone on (the original collects whole trials).

        step                 0    1    2    3 (= T-1)         trial ends after step 1
        trial_end            0    1    0    0                 and goes on after step 3
        cut                  0    1    0    1
        next_values          v1   0*   v3   V(next input)     * V(final obs) or 0, as above
    """
    values = rollout.values
    v_next = torch.cat([values[1:], torch.zeros_like(values[:1])])
    cut = rollout.trial_end.clone()
    if not across_episodes:
        cut |= rollout.episode_end
    at_time_limit = rollout.bootstrap_values if bootstrap_truncation else torch.zeros_like(values)
    at_cut = torch.where(rollout.terminated, 0.0, at_time_limit)
    next_values = torch.where(cut, at_cut, v_next)
    stopped_inside = ~cut[-1]
    next_values[-1] = torch.where(stopped_inside, rollout.cut_values, next_values[-1])
    cut[-1] = True
    return next_values, cut


def lr_factor(step: int, steps_per_epoch: int, start: int, end: int, min_factor: float) -> float:
    """The original code's LR decay, counted in gradient steps: the LR is multiplied by
    min_factor^(1/(end-start)) at each milestone step (start + j) * steps_per_epoch,
    j = 0 .. end-start-1, so that gradient step `step` (0-based) runs at
    min_factor^(#milestones <= step / (end-start)).

    `steps_per_epoch` is the original's nominal floor(update_epochs * samples / minibatch_size)
    (312 for the MuJoCo presets), while an epoch really takes update_epochs *
    ceil(samples / minibatch_size) steps (320): the decay starts and ends about 2.5% earlier than
    the epoch numbers say, as in the original.
    """
    decays = min(max(step // steps_per_epoch - start + 1, 0), end - start)
    return min_factor ** (decays / (end - start))


@dataclass(frozen=True)
class LRSchedule:
    """One optimiser's learning rate by gradient step: constant, or `lr_factor` decay."""

    lr: float
    decay: bool
    start: int
    end: int
    min_factor: float
    steps_per_epoch: int

    def __call__(self, step: int) -> float:
        if not self.decay:
            return self.lr
        return self.lr * lr_factor(step, self.steps_per_epoch, self.start, self.end, self.min_factor)


def lr_schedules(config: PPOConfig, samples_per_epoch: int, steps_per_epoch: int | None = None
                 ) -> tuple[LRSchedule, LRSchedule]:
    """(policy, value) schedules of an update over `samples_per_epoch` samples per epoch, whose
    epochs are counted in the original's nominal gradient steps (`lr_factor`) unless an update
    says how many steps its epoch takes (`steps_per_epoch`: minibatches of whole sequences,
    whose count the nominal formula does not give)."""
    nominal = steps_per_epoch or max(1, config.update_epochs * samples_per_epoch // config.minibatch_size)
    shared = dict(start=config.decay_epoch_start, end=config.decay_epoch_end, min_factor=config.min_lr_factor,
                  steps_per_epoch=nominal)
    return (LRSchedule(config.policy_lr, config.policy_lr_decay, **shared),  # type: ignore[arg-type]
            LRSchedule(config.value_lr, config.value_lr_decay, **shared))  # type: ignore[arg-type]


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _mean(x: Tensor, total: float | None) -> Tensor:
    """The mean of x, or, given `total`, its sum over `total` rows (this process's share of the
    mean over a minibatch that several processes split)."""
    return x.mean() if total is None else x.sum() / total


def clipped_surrogate(log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, clip_coef: float,
                      total: float | None = None) -> Tensor:
    """-mean min(rho A, clip(rho, 1-eps, 1+eps) A), rho = pi / pi_old; inputs (N,) (`_mean`)."""
    ratio = (log_probs - old_log_probs).exp()
    clipped = ratio.clamp(1.0 - clip_coef, 1.0 + clip_coef)
    return -_mean(torch.minimum(ratio * advantages, clipped * advantages), total)


def value_loss(predicted: Tensor, returns: Tensor, log_std: Tensor, kind: str, total: float | None = None) -> Tensor:
    """'nll': -mean log N(R; V, sigma^2) with learned sigma = exp(log_std); 'mse': mean (V-R)^2 / 2
    (`_mean`)."""
    if kind == "mse":
        return 0.5 * _mean((predicted - returns).pow(2), total)
    z = (returns - predicted) / log_std.exp()
    return _mean(0.5 * z.pow(2) + log_std + 0.5 * torch.log(torch.tensor(2 * torch.pi)), total)


def explained_variance(predicted: Tensor, returns: Tensor) -> float:
    """1 - Var(R - V) / Var(R) (NaN when the returns do not vary)."""
    variance = returns.var()
    return float(1 - (returns - predicted).var() / variance) if variance > 0 else float("nan")


def advantages_and_returns(rollout: Rollout, config: PPOConfig) -> tuple[Tensor, Tensor]:
    """GAE advantages and discounted-return value targets over each trial, both (T, B)."""
    next_values, cut = bootstrap_targets(rollout, config.gae_across_episodes, config.bootstrap_truncation)
    advantages = gae(rollout.rewards, rollout.values, next_values, cut, config.gamma, config.gae_lambda)
    returns = discounted_returns(rollout.rewards, rollout.values, next_values, cut, config.gamma)
    return advantages, returns


PolicyTerms = Callable[[Tensor], tuple[Tensor, Tensor, Tensor, Tensor]]
"""Minibatch index (items) -> (log-probs now, log-probs at sampling, advantages, entropy): the
first three flattened over the minibatch's valid steps, entropy a scalar."""
ValueTerms = Callable[[Tensor], tuple[Tensor, Tensor]]
"""Minibatch index (items) -> (values now, value targets), flattened over the valid steps."""
Advantages = Callable[[Tensor], Tensor]
"""Minibatch index (items) -> the advantages of its valid steps, flattened: data alone, no
network, so a process that takes a share of a minibatch reads the whole minibatch's sample count
and advantage statistics from the batch it holds instead of asking the others."""


@dataclass(frozen=True)
class Gathered:
    """A phase's terms in two parts, so that the model's part can be compiled: `gather` reads a
    minibatch's tensors from the epoch's batch (index -> tensors, data alone) and `terms` runs
    the model on them. Called with an index, it is the phase's `PolicyTerms` or `ValueTerms`."""

    gather: Callable[[Tensor], tuple[Tensor, ...]]
    terms: Callable[..., tuple[Tensor, ...]]

    def __call__(self, index: Tensor) -> tuple[Tensor, ...]:
        return self.terms(*self.gather(index))


def policy_objective(log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, entropy: Tensor,
                     config: PPOConfig) -> tuple[Tensor, Tensor]:
    """One minibatch's policy loss (the clipped surrogate of its advantages, normalised over the
    minibatch where `config.norm_adv`, minus the entropy bonus) and its log-ratios, detached."""
    if config.norm_adv and len(advantages) > 1:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    loss = clipped_surrogate(log_probs, old_log_probs, advantages, config.clip_coef) - config.ent_coef * entropy
    return loss, (log_probs - old_log_probs).detach()


def policy_statistics(log_ratio: Tensor, clip_coef: float) -> Tensor:
    """(approximate KL, clip fraction) of a minibatch's log-ratios log pi/pi_old: the mean of
    (rho - 1) - log rho (Schulman's k3 estimator) and the fraction with |rho - 1| > clip_coef."""
    with torch.no_grad():
        ratio = log_ratio.exp()
        return torch.stack([((ratio - 1) - log_ratio).mean(), ((ratio - 1).abs() > clip_coef).float().mean()])


def _append_policy_statistics(stats: dict[str, list[float]], statistics: Tensor) -> None:
    approx_kl, clipfrac = statistics.tolist()
    stats["approx_kl"].append(approx_kl)
    stats["clipfrac"].append(clipfrac)


class _Objective(nn.Module):
    """`model` as a submodule, so that `functional_call` swaps its parameters while `objective`
    (a closure over the same model) runs."""

    def __init__(self, model: nn.Module, objective: Callable[..., tuple[Tensor, Tensor]]) -> None:
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, *data: Tensor) -> tuple[Tensor, Tensor]:
        return self.objective(*data)


def _small_bmm_as_loops() -> None:
    """Have inductor write batched matmuls as fused loops (a product and a sum) instead of
    calling the library's batched GEMM: the attention's are tiny (a window of 5, heads of 8),
    and the library call costs about 60 us each where a loop takes a few (one ML1 step: 2.4
    against 3.7 ms, benchmarks/README.md). Only batched matmuls: `cpu_max_other_dimension_
    decomposition` 0 leaves every plain matmul to the library. The pass reads its thresholds
    when inductor first loads it, so they are set in the module too for a process that
    compiled something before."""
    options = {"cpu_max_first_dimension_decomposition": 1 << 30, "cpu_max_other_dimension_decomposition": 0}
    torch._inductor.config.post_grad_fusion_options = {
        **torch._inductor.config.post_grad_fusion_options, "decompose_mm_pass": options}
    from torch._inductor.fx_passes import decompose_mem_bound_mm

    for name, value in options.items():
        setattr(decompose_mem_bound_mm, name, value)


class CompiledStep:
    """A phase's whole minibatch step as one compiled graph (`torch.compile`): the objective's
    gradients (`torch.func.grad_and_value`), their clipping to `max_grad_norm`, and the AdamW
    step of the phase's `optimizer`, whose parameters and state tensors it updates in place, as
    `optimizer.step()` would (the same state, so checkpoints do not tell the two apart).
    Small minibatches are bound by the cost of each operator and call, not by their arithmetic
    (ML1's 32 windows through d_model 32: 5% of the fp32 peak eager; benchmarks/README.md); one
    graph removes most of it. `objective(*data)` returns (loss, aux); a call returns them after
    the step. Compiled once per minibatch shape (an epoch's last minibatch may be shorter), on
    the first call."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 objective: Callable[..., tuple[Tensor, Tensor]], max_grad_norm: float | None) -> None:
        (group,) = optimizer.param_groups
        if not isinstance(optimizer, torch.optim.AdamW) or group["amsgrad"] or group["maximize"]:
            raise ValueError("a compiled step runs plain AdamW")
        self.optimizer, self.params = optimizer, list(group["params"])
        wrapper = _Objective(model, objective)
        names = {id(p): name for name, p in wrapper.named_parameters()}
        keys = [names[id(p)] for p in self.params]
        beta1, beta2 = group["betas"]
        eps, weight_decay = group["eps"], group["weight_decay"]

        def loss(params: dict[str, Tensor], *data: Tensor) -> tuple[Tensor, Tensor]:
            return functional_call(wrapper, params, data, strict=False)

        gradients = grad_and_value(loss, has_aux=True)

        def step(params: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor], steps: list[Tensor],
                 lr: Tensor, *data: Tensor) -> tuple[Tensor, Tensor]:
            by_name, (value, aux) = gradients(dict(zip(keys, params)), *data)
            grads = [by_name[k] for k in keys]
            if max_grad_norm is not None:  # as torch.nn.utils.clip_grad_norm_
                norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
                grads = [g * (max_grad_norm / (norm + 1e-6)).clamp(max=1.0) for g in grads]
            for p, g, exp_avg, exp_avg_sq, count in zip(params, grads, exp_avgs, exp_avg_sqs, steps, strict=True):
                # torch.optim.AdamW's arithmetic (decoupled weight decay, bias-corrected moments)
                count.add_(1)
                p.mul_(1 - lr * weight_decay)
                exp_avg.lerp_(g, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                denom = exp_avg_sq.sqrt() / (1 - beta2 ** count).sqrt() + eps
                p.sub_(lr / (1 - beta1 ** count) * exp_avg / denom)
            return value, aux

        _small_bmm_as_loops()
        # A code object of this step's own: dynamo caches graphs per code object, so every
        # CompiledStep (policy and value, any model in the process) would share one cache, check
        # the others' guards at each call, and past dynamo's limit of 8 entries run uncompiled.
        step = types.FunctionType(step.__code__.replace(), step.__globals__, step.__name__, step.__defaults__,
                                  step.__closure__)
        # cpp_wrapper: the graph's calls to its kernels are made from C++, not from generated
        # Python; with about 60 small kernels per ML1 step that per-call cost was ~15% of the step.
        # cpp.threads 1: the graph's own kernels run on one thread (the library GEMMs keep the
        # process's threads). Inductor's OpenMP regions over these small loops made a step slower
        # with 2 threads than with 1 (2 threads: ML1-Reach 7.9 ms against 2.9, cheetah-vel 231
        # against 72; with OMP_WAIT_POLICY=PASSIVE cheetah-vel took 1.6 s: thousands of regions)
        self.graph = torch.compile(step, dynamic=False, options={"cpp_wrapper": True, "cpp.threads": 1})
        self.lr = torch.zeros(())

    def __call__(self, lr: float, *data: Tensor) -> tuple[Tensor, Tensor]:
        states = [self._state(p) for p in self.params]
        self.lr.fill_(lr)
        return self.graph([p.detach() for p in self.params], [s["exp_avg"] for s in states],
                          [s["exp_avg_sq"] for s in states], [s["step"] for s in states], self.lr, *data)

    def _state(self, p: Tensor) -> dict[str, Tensor]:
        """p's AdamW state, created at the first step as torch's fused AdamW creates it (a
        float32 step count on p's device), so either can take over from the other."""
        state = self.optimizer.state[p]
        if not state:
            state.update(step=torch.zeros((), dtype=torch.float32, device=p.device),
                         exp_avg=torch.zeros_like(p, memory_format=torch.preserve_format),
                         exp_avg_sq=torch.zeros_like(p, memory_format=torch.preserve_format))
        return state


@dataclass(frozen=True)
class Phase:
    """One phase of the update: its optimiser, the parameters it steps (for gradient clipping)
    and its learning-rate schedule; `compiled`: its whole minibatch step as one graph, optimiser
    step included (then the phase's terms are `Gathered`, whose `gather` feeds it)."""

    optimizer: torch.optim.Optimizer
    params: Sequence[Tensor]
    schedule: LRSchedule
    compiled: CompiledStep | None = None


def ppo_update(
    n_items: int,
    items_per_minibatch: int,
    policy: tuple[Phase, PolicyTerms],
    value: tuple[Phase, ValueTerms] | None,
    value_log_std: Tensor,
    config: PPOConfig,
    generator: torch.Generator,
    first_step: int,
    advantages: Advantages,
) -> dict[str, float]:
    """The paper's update: `update_epochs` shuffled passes of policy minibatch steps, then as
    many of value steps, each phase with its own optimiser and its learning rate set before every
    step from its schedule (gradient steps counted from `first_step`). An item is whatever the
    algorithm samples independently (TrMRL: a window; RL^2: a sequence chunk). Over several
    processes each takes a share of every minibatch (`trmrl.distributed`), which `advantages`
    sizes. No value phase where `value` is None (a baseline fitted apart). Returns `losses/...`
    and `charts/..._lr` metrics."""
    stats: dict[str, list[float]] = {"policy_loss": [], "value_loss": [], "approx_kl": [], "clipfrac": []}
    rates: dict[str, float] = {}
    parallel = distributed.world().size > 1
    for name, (phase, terms) in (("policy", policy), *((("value", value),) if value else ())):
        step = first_step
        for _ in range(config.update_epochs):
            for index in torch.randperm(n_items, generator=generator).split(items_per_minibatch):
                rates[f"charts/{name}_lr"] = phase.schedule(step)
                set_lr(phase.optimizer, rates[f"charts/{name}_lr"])
                step += 1
                if parallel:
                    _data_parallel_step(name, phase, terms, distributed.minibatch_share(index), advantages(index),
                                        value_log_std, config, stats)
                    continue
                if phase.compiled:
                    loss, extras = phase.compiled(rates[f"charts/{name}_lr"], *terms.gather(index))  # type: ignore[union-attr]
                    if not math.isfinite(number := loss.item()):
                        raise DivergenceError(f"non-finite {name} loss ({number})")
                    stats[f"{name}_loss"].append(number)
                    if name == "policy":
                        _append_policy_statistics(stats, extras)
                    continue
                if name == "value":
                    predicted, returns = terms(index)  # type: ignore[misc]
                    loss = value_loss(predicted, returns, value_log_std, config.value_loss)
                    gradient_step(loss, phase.optimizer, phase.params, config.max_grad_norm, "value")
                    stats["value_loss"].append(loss.item())
                    continue
                loss, log_ratio = policy_objective(*terms(index), config)  # type: ignore[misc]
                gradient_step(loss, phase.optimizer, phase.params, config.max_grad_norm, "policy")
                stats["policy_loss"].append(loss.item())
                _append_policy_statistics(stats, policy_statistics(log_ratio, config.clip_coef))
    return {f"losses/{k}": sum(v) / len(v) for k, v in stats.items() if v} | rates


def _data_parallel_step(
    name: str, phase: Phase, terms: PolicyTerms | ValueTerms, rows: Tensor, whole: Tensor, value_log_std: Tensor,
    config: PPOConfig, stats: dict[str, list[float]],
) -> None:
    """This process's part of one minibatch step when several split it (`trmrl.distributed`):
    the loss over its `rows` as a share of the whole minibatch's (its sum over the minibatch's
    sample count, advantages normalised with the mean and std of `whole`, the minibatch's
    advantages), then the gradients summed over the processes in one all-reduce. Appends the
    minibatch's statistics."""
    n = len(whole)
    out = terms(rows) if len(rows) else None
    if name == "value":
        predicted, returns = out if out is not None else (None, None)  # type: ignore[misc]
        loss = None if predicted is None else value_loss(predicted, returns, value_log_std, config.value_loss, total=n)
        summed = gradient_step(loss, phase.optimizer, phase.params, config.max_grad_norm, "value", data_parallel=True)
        stats["value_loss"].append(float(summed[0]))
        return
    if out is None:
        summed = gradient_step(None, phase.optimizer, phase.params, config.max_grad_norm, "policy",
                               torch.zeros(2), data_parallel=True)
    else:
        log_probs, old_log_probs, advantages, entropy = out  # type: ignore[misc]
        if config.norm_adv and n > 1:
            advantages = (advantages - whole.mean()) / (whole.std() + 1e-8)  # as one process normalises
        loss = clipped_surrogate(log_probs, old_log_probs, advantages, config.clip_coef, total=n)
        loss = loss - config.ent_coef * entropy * (len(advantages) / n)  # entropy: a mean over the rows
        with torch.no_grad():
            log_ratio = log_probs - old_log_probs
            extras = torch.stack([((log_ratio.exp() - 1) - log_ratio).sum() / n,
                                  ((log_ratio.exp() - 1).abs() > config.clip_coef).float().sum() / n])
        summed = gradient_step(loss, phase.optimizer, phase.params, config.max_grad_norm, "policy", extras,
                               data_parallel=True)
    stats["policy_loss"].append(float(summed[0]))
    stats["approx_kl"].append(float(summed[1]))
    stats["clipfrac"].append(float(summed[2]))
