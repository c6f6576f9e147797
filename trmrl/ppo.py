"""PPO over trials: pure functions for the math, one function for the update.

Index convention (as rlax): for step t, `next_values[t]` is the value the TD error bootstraps
from after step t (already 0 after a true termination) and `cut[t]` stops the advantage
recursion after step t:

    delta_t = r_t + gamma * next_values[t] - v_t
    A_t     = delta_t + gamma * lambda * (1 - cut[t]) * A_{t+1}
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from trmrl.config import MemoryScope, PPOConfig
from trmrl.errors import DivergenceError
from trmrl.memory import gather_windows
from trmrl.nets.policy import ActorCritic
from trmrl.sampler import Rollout


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
    recursion is cut (a trial end, the rollout's last step, or an episode end when not
    `across_episodes`), a true termination bootstraps from 0 and a time limit from
    V(final observation) if `bootstrap_truncation`, else from 0 (the original code).
    """
    values = rollout.values
    v_next = torch.cat([values[1:], torch.zeros_like(values[:1])])
    cut = rollout.trial_end.clone()
    cut[-1] = True
    if not across_episodes:
        cut |= rollout.episode_end
    at_time_limit = rollout.bootstrap_values if bootstrap_truncation else torch.zeros_like(values)
    at_cut = torch.where(rollout.terminated, 0.0, at_time_limit)
    return torch.where(cut, at_cut, v_next), cut


def lr_factor(epoch: int, start: int, end: int, min_factor: float) -> float:
    """The original code's LR decay: multiply by min_factor^(1/(end-start)) once per epoch from
    epoch `start` on, (end - start) times in all, then hold at min_factor."""
    decays = min(max(epoch - start + 1, 0), end - start)
    return min_factor ** (decays / (end - start))


@dataclass
class Batch:
    """The epoch's samples, flattened to N = T * B independent windows."""

    windows: Tensor  # (N, W, O)
    lengths: Tensor  # (N,)
    actions: Tensor  # (N, A)
    log_probs: Tensor  # (N,)
    advantages: Tensor  # (N,)
    returns: Tensor  # (N,)
    values: Tensor  # (N,) at sampling time

    def __len__(self) -> int:
        return len(self.lengths)


def make_batch(rollout: Rollout, config: PPOConfig, window: int, memory_scope: MemoryScope) -> Batch:
    """Advantages and returns over trials, and every step's window rebuilt from stored inputs."""
    next_values, cut = bootstrap_targets(rollout, config.gae_across_episodes, config.bootstrap_truncation)
    advantages = gae(rollout.rewards, rollout.values, next_values, cut, config.gamma, config.gae_lambda)
    returns = discounted_returns(rollout.rewards, rollout.values, next_values, cut, config.gamma)
    windows, lengths = gather_windows(rollout.obs, rollout.clears(memory_scope), window)
    flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
    return Batch(flat(windows), flat(lengths), flat(rollout.actions), flat(rollout.log_probs),
                 flat(advantages), flat(returns), flat(rollout.values))


def clipped_surrogate(log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, clip_coef: float) -> Tensor:
    """-mean min(rho A, clip(rho, 1-eps, 1+eps) A), rho = pi / pi_old; inputs (N,)."""
    ratio = (log_probs - old_log_probs).exp()
    clipped = ratio.clamp(1.0 - clip_coef, 1.0 + clip_coef)
    return -torch.minimum(ratio * advantages, clipped * advantages).mean()


def value_loss(predicted: Tensor, returns: Tensor, log_std: Tensor, kind: str) -> Tensor:
    """'nll': -mean log N(R; V, sigma^2) with learned sigma = exp(log_std); 'mse': mean (V-R)^2 / 2."""
    if kind == "mse":
        return 0.5 * (predicted - returns).pow(2).mean()
    z = (returns - predicted) / log_std.exp()
    return (0.5 * z.pow(2) + log_std + 0.5 * torch.log(torch.tensor(2 * torch.pi))).mean()


def _step(loss: Tensor, optimizer: torch.optim.Optimizer, params: Iterable[Tensor], config: PPOConfig, what: str) -> None:
    if not torch.isfinite(loss):
        raise DivergenceError(f"non-finite {what} loss ({loss.item()})")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(list(params), config.max_grad_norm)
    optimizer.step()


def ppo_update(
    model: ActorCritic,
    policy_optimizer: torch.optim.Optimizer,
    value_optimizer: torch.optim.Optimizer,
    batch: Batch,
    config: PPOConfig,
    generator: torch.Generator,
) -> dict[str, float]:
    """The paper's update: `update_epochs` shuffled passes of policy minibatch steps, then as
    many of value steps (each phase with its own AdamW). Returns `losses/...` metrics."""
    n = len(batch)
    policy_params = list(model.policy_parameters())
    value_params = list(model.value_parameters())
    stats: dict[str, list[float]] = {"policy_loss": [], "value_loss": [], "approx_kl": [], "clipfrac": []}
    for phase in ("policy", "value"):
        for _ in range(config.update_epochs):
            for index in torch.randperm(n, generator=generator).split(config.minibatch_size):
                windows, lengths = batch.windows[index], batch.lengths[index]
                if phase == "value":
                    predicted = model.value(windows, lengths)
                    loss = value_loss(predicted, batch.returns[index], model.value_log_std, config.value_loss)
                    _step(loss, value_optimizer, value_params, config, "value")
                    stats["value_loss"].append(loss.item())
                    continue
                out = model(windows, lengths)
                log_probs = out.log_prob(batch.actions[index])
                advantages = batch.advantages[index]
                if config.norm_adv and len(index) > 1:
                    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
                loss = clipped_surrogate(log_probs, batch.log_probs[index], advantages, config.clip_coef)
                loss = loss - config.ent_coef * out.entropy()
                _step(loss, policy_optimizer, policy_params, config, "policy")
                with torch.no_grad():
                    log_ratio = log_probs - batch.log_probs[index]
                    stats["approx_kl"].append(((log_ratio.exp() - 1) - log_ratio).mean().item())
                    stats["clipfrac"].append(((log_ratio.exp() - 1).abs() > config.clip_coef).float().mean().item())
                    stats["policy_loss"].append(loss.item())
    variance = batch.returns.var()
    explained = 1 - (batch.returns - batch.values).var() / variance if variance > 0 else torch.tensor(float("nan"))
    out_stats = {f"losses/{k}": sum(v) / len(v) for k, v in stats.items()}
    out_stats["losses/explained_variance"] = float(explained)
    with torch.no_grad():
        out_stats["losses/entropy"] = float(model(batch.windows[:1], batch.lengths[:1]).entropy())
        out_stats["charts/action_std"] = float(model.log_std.exp().mean())
    return out_stats
