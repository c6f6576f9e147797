"""TrMRL (Melo, ICML 2022): a window of working memories -> causal transformer without
LayerNorm (T-Fixup) -> Gaussian policy, trained with PPO over trials of E episodes.

The policy's state is its window (`trmrl.memory.Window`); the memory scope (clear the window at
every episode start, as the original code, or only at a trial start) is the policy's own
setting. The update rebuilds every step's window from the rollout's stored inputs
(`gather_windows`) and treats each window as an independent sample (no backprop through time):
`update_epochs` passes of policy minibatch steps, then as many of value steps, each phase with
its own AdamW (the original code).

Shapes: T steps per trial, B tasks, N = T * B samples, W window, O augmented observation,
A action dim.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from typing import ClassVar

import torch
from torch import Tensor

from trmrl import distributed, ppo
from trmrl.algos.common import InMemoryPPO, TwoPhaseOptimizers
from trmrl.attention import attention_by_age, save_attention, sequence_attention_by_age
from trmrl.config import OnPolicyConfig, PPOConfig, TaskConfig, TrainConfig, require
from trmrl.errors import ConfigError
from trmrl.memory import Window, gather_windows
from trmrl.nets.policy import MIN_LOG_STD, ActorCritic, MemoryScope, ModelConfig, PolicyOutput, gaussian_entropy
from trmrl.nets.transformer import KVCache
from trmrl.protocols import Starts, Step
from trmrl.rollout import cut_sequences
from trmrl.sampler import Rollout, TrialSampler
from trmrl.seeding import Stream, random_rows, torch_generator
from trmrl.tasks import TaskDistribution
from trmrl.trial import forget_previous_episode

if TYPE_CHECKING:
    from trmrl.evaluate import MetaTester


@dataclass(frozen=True)
class TrMRLAgent(OnPolicyConfig):
    """TrMRL's part of a run's config: the working-memory transformer (`model`), PPO (`ppo`)."""

    name: ClassVar[str] = "trmrl"
    model: ModelConfig = field(default_factory=ModelConfig)
    compiles: ClassVar[bool] = True

    def check(self, task: TaskConfig) -> None:
        super().check(task)
        require(not self.ppo.compile or self.model.memory == "window",
                "ppo.compile runs the window memory's update only (model.memory window)")


class TrMRLPolicy:
    """The acting agent: `Policy[Window]`. With the `episode` scope the window is cleared at every
    episode start and the carried a_{t-1}, r_{t-1} are hidden there, so nothing of a previous
    episode reaches the policy; with `trial` it is cleared only at a trial start."""

    def __init__(self, model: ActorCritic, memory_scope: MemoryScope) -> None:
        self.model = model
        self.memory_scope: MemoryScope = memory_scope

    @property
    def device(self) -> torch.device:
        return self.model.log_std.device

    def visible(self, inputs: Tensor, episode_start: Tensor) -> Tensor:
        """The inputs (..., O) as the policy sees them, episode_start (...)."""
        if self.memory_scope == "trial":
            return inputs
        return forget_previous_episode(inputs, episode_start, self.model.act_dim)

    def clears(self, starts: Starts) -> Tensor:
        return starts.episode if self.memory_scope == "episode" else starts.trial

    def initial_state(self, n: int) -> Window:
        return Window.empty(n, self.model.config.window, self.model.obs_dim, device=self.device)

    def _pushed(self, inputs: Tensor, state: Window, starts: Starts) -> Window:
        return state.push(self.visible(inputs, starts.episode), self.clears(starts))

    @torch.no_grad()
    def act(
        self, inputs: Tensor, state: Window, starts: Starts, generators: Sequence[torch.Generator] | None,
        deterministic: bool = False,
    ) -> tuple[Step, Window]:
        state = self._pushed(inputs, state, starts)
        return self._step(self.model(state.buffer, state.length), generators, deterministic), state

    def _step(self, out: PolicyOutput, generators: Sequence[torch.Generator] | None, deterministic: bool) -> Step:
        if deterministic:
            action = out.mean
        else:
            assert generators is not None, "sampled actions need one generator per env"
            action = out.mean + out.log_std.exp() * random_rows(generators, out.mean.shape[1:], device=self.device)
        return Step(action, out.log_prob(action), out.value)

    @torch.no_grad()
    def value(self, inputs: Tensor, state: Window, starts: Starts) -> Tensor:
        state = self._pushed(inputs, state, starts)
        return self.model.value(state.buffer, state.length)


class WholeMemoryPolicy(TrMRLPolicy):
    """The acting agent with 'whole' memory: `Policy[KVCache]`. Its state holds every layer's keys
    and values since the scope's last clear, so a step runs one new position per layer; `act`
    updates the cache in place, `value` reads a copy."""

    def initial_state(self, n: int) -> KVCache:  # type: ignore[override]
        return self.model.empty_cache(n)

    @torch.no_grad()
    def act(  # type: ignore[override]
        self, inputs: Tensor, state: KVCache, starts: Starts, generators: Sequence[torch.Generator] | None,
        deterministic: bool = False,
    ) -> tuple[Step, KVCache]:
        state.restart(self.clears(starts))
        out = self.model.step(self.visible(inputs, starts.episode), state)
        return self._step(out, generators, deterministic), state

    @torch.no_grad()
    def value(self, inputs: Tensor, state: KVCache, starts: Starts) -> Tensor:  # type: ignore[override]
        inputs = self.visible(inputs, starts.episode)
        if not self.model.config.share_network:  # V of the input alone: no memory to read
            return self.model.value_of(inputs, inputs)
        cache = state.copy()
        cache.restart(self.clears(starts))
        return self.model.step(inputs, cache).value


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


def make_windows(rollout: Rollout, policy: TrMRLPolicy) -> tuple[Tensor, Tensor]:
    """Every step's window (T, B, W, O) and valid length (T, B), rebuilt from the rollout's
    stored inputs: what the policy held when it acted at that step."""
    starts = Starts(rollout.episode_start, rollout.trial_start)
    inputs = policy.visible(rollout.obs, rollout.episode_start)
    return gather_windows(inputs, policy.clears(starts), policy.model.config.window)


def make_batch(rollout: Rollout, config: PPOConfig, policy: TrMRLPolicy) -> Batch:
    """Advantages and returns over trials, and every step's window rebuilt from stored inputs."""
    advantages, returns = ppo.advantages_and_returns(rollout, config)
    windows, lengths = make_windows(rollout, policy)
    flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
    return Batch(flat(windows), flat(lengths), flat(rollout.actions), flat(rollout.log_probs),
                 flat(advantages), flat(returns), flat(rollout.values))


@dataclass
class TrialSequences:
    """'whole' memory: the epoch's samples as S sequences, each from a clear of the memory (a
    trial start; every episode start under the 'episode' scope) to the next, padded to L."""

    inputs: Tensor  # (S, L, O) as the policy saw them
    lengths: Tensor  # (S,)
    valid: Tensor  # (S, L) bool
    actions: Tensor  # (S, L, A)
    log_probs: Tensor  # (S, L)
    advantages: Tensor  # (S, L)
    returns: Tensor  # (S, L)
    values: Tensor  # (S, L) at sampling time

    def __len__(self) -> int:
        return len(self.lengths)


def make_sequences(rollout: Rollout, config: PPOConfig, policy: TrMRLPolicy) -> TrialSequences:
    """Advantages and returns over trials, and the rollout cut where the policy's memory was
    cleared: each sequence is one causal pass of the update."""
    advantages, returns = ppo.advantages_and_returns(rollout, config)
    starts = Starts(rollout.episode_start, rollout.trial_start)
    cut = cut_sequences(policy.clears(starts))
    batch_major = lambda x: cut.gather(x).transpose(0, 1)  # noqa: E731
    inputs = policy.visible(rollout.obs, rollout.episode_start)
    return TrialSequences(batch_major(inputs), cut.length, cut.valid.T, batch_major(rollout.actions),
                          batch_major(rollout.log_probs), batch_major(advantages), batch_major(returns),
                          batch_major(rollout.values))


def sequence_update(
    model: ActorCritic,
    policy_optimizer: torch.optim.Optimizer,
    value_optimizer: torch.optim.Optimizer,
    batch: TrialSequences,
    config: PPOConfig,
    generator: torch.Generator,
    schedules: tuple[ppo.LRSchedule, ppo.LRSchedule],
    first_step: int,
    per_minibatch: int,
) -> dict[str, float]:
    """`ppo.ppo_update` over the epoch's sequences, `per_minibatch` whole sequences a step, each
    in one causal pass."""

    def policy_terms(index: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        valid = batch.valid[index]
        memory = model.sequence_memories(batch.inputs[index], batch.lengths[index])[valid]  # (n, D)
        out = model.output(memory, batch.inputs[index][valid])
        return out.log_prob(batch.actions[index][valid]), batch.log_probs[index][valid], \
            batch.advantages[index][valid], out.entropy()

    def value_terms(index: Tensor) -> tuple[Tensor, Tensor]:
        valid, inputs = batch.valid[index], batch.inputs[index]
        memory = model.sequence_memories(inputs, batch.lengths[index]) if model.config.share_network else inputs
        return model.value_of(memory[valid], inputs[valid]), batch.returns[index][valid]

    stats = ppo.ppo_update(
        len(batch), per_minibatch,
        (ppo.Phase(policy_optimizer, list(model.policy_parameters()), schedules[0]), policy_terms),
        (ppo.Phase(value_optimizer, list(model.value_parameters()), schedules[1]), value_terms),
        model.value_log_std, config, generator, first_step, lambda index: batch.advantages[index][batch.valid[index]])
    stats["losses/explained_variance"] = ppo.explained_variance(batch.values[batch.valid], batch.returns[batch.valid])
    return stats | _policy_charts(model)


def _policy_charts(model: ActorCritic) -> dict[str, float]:
    with torch.no_grad():
        log_std = model.log_std.clamp(min=MIN_LOG_STD).expand(model.act_dim)
        return {"losses/entropy": float(gaussian_entropy(log_std)), "charts/action_std": float(model.log_std.exp().mean())}


def policy_terms(model: ActorCritic, windows: Tensor, lengths: Tensor, actions: Tensor, old_log_probs: Tensor,
                 advantages: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """`ppo.PolicyTerms` of a minibatch of windows (N, W, O) with lengths (N,)."""
    out = model(windows, lengths)
    return out.log_prob(actions), old_log_probs, advantages, out.entropy()


def value_terms(model: ActorCritic, windows: Tensor, lengths: Tensor, returns: Tensor) -> tuple[Tensor, Tensor]:
    """`ppo.ValueTerms` of a minibatch of windows."""
    return model.value(windows, lengths), returns


def compiled_steps(model: ActorCritic, optimizers: TwoPhaseOptimizers, config: PPOConfig
                   ) -> tuple[ppo.CompiledStep, ppo.CompiledStep]:
    """The policy and value phases' minibatch steps compiled (`ppo.compile`), over the data
    `ppo_update` gathers, each with its phase's optimiser step; the value's log-std is read from
    the model inside the graph, where it is a parameter being differentiated."""
    def policy(*data: Tensor) -> tuple[Tensor, Tensor]:
        loss, log_ratio = ppo.policy_objective(*policy_terms(model, *data), config)
        return loss, ppo.policy_statistics(log_ratio, config.clip_coef)

    def value(*data: Tensor) -> tuple[Tensor, Tensor]:
        predicted, returns = value_terms(model, *data)
        loss = ppo.value_loss(predicted, returns, model.value_log_std, config.value_loss)
        return loss, loss.detach()

    return (ppo.CompiledStep(model, optimizers.policy, policy, config.max_grad_norm),
            ppo.CompiledStep(model, optimizers.value, value, config.max_grad_norm))


def ppo_update(
    model: ActorCritic,
    policy_optimizer: torch.optim.Optimizer,
    value_optimizer: torch.optim.Optimizer,
    batch: Batch,
    config: PPOConfig,
    generator: torch.Generator,
    schedules: tuple[ppo.LRSchedule, ppo.LRSchedule],
    first_step: int,
    compiled: tuple[ppo.CompiledStep, ppo.CompiledStep] | None = None,
) -> dict[str, float]:
    """`ppo.ppo_update` over the epoch's windows, each an independent sample; `compiled`: its
    phases' steps as `compiled_steps` (built once per run: each compiles on its first call)."""
    policy = ppo.Gathered(
        lambda index: (batch.windows[index], batch.lengths[index], batch.actions[index], batch.log_probs[index],
                       batch.advantages[index]),
        lambda *data: policy_terms(model, *data))
    value = ppo.Gathered(lambda index: (batch.windows[index], batch.lengths[index], batch.returns[index]),
                         lambda *data: value_terms(model, *data))
    policy_step, value_step = compiled or (None, None)
    stats = ppo.ppo_update(
        len(batch), config.minibatch_size,
        (ppo.Phase(policy_optimizer, list(model.policy_parameters()), schedules[0], policy_step), policy),
        (ppo.Phase(value_optimizer, list(model.value_parameters()), schedules[1], value_step), value),
        model.value_log_std, config, generator, first_step, lambda index: batch.advantages[index])
    stats["losses/explained_variance"] = ppo.explained_variance(batch.values, batch.returns)
    return stats | _policy_charts(model)


class TrMRL(InMemoryPPO):
    """`Algorithm`: the model, its two optimisers (policy phase, value phase) and its sampler."""

    Config: ClassVar[type[TrMRLAgent]] = TrMRLAgent
    """This algorithm's part of a run's config."""

    def __init__(self, config: TrainConfig, distribution: TaskDistribution) -> None:
        self.config = config
        t = config.task
        self.sampler = TrialSampler.for_training(distribution, t, distributed.share_size(t.tasks_per_epoch))
        self.model = ActorCritic(self.sampler.obs_dim, self.sampler.act_dim, config.model,
                                 torch_generator(config.seed, Stream.INIT)).to(distributed.device())
        self.optimizers = TwoPhaseOptimizers.create(self.model, config.ppo)
        whole, scope = config.model.memory == "whole", config.model.memory_scope
        self.policy = (WholeMemoryPolicy if whole else TrMRLPolicy)(self.model, scope)
        samples = t.tasks_per_epoch * t.steps_per_trial
        # gradient steps per phase and epoch: the LR schedule's clock, derived, so resuming needs no counter
        items, per_minibatch = samples, config.ppo.minibatch_size
        if whole:  # minibatches of whole sequences (one per trial, or per episode), as many as fit
            length = t.max_episode_steps if scope == "episode" else t.steps_per_trial
            items = t.tasks_per_epoch * t.steps_per_trial // length
            per_minibatch = self.sequences_per_minibatch = max(1, config.ppo.minibatch_size // length)
        self.steps_per_epoch = config.ppo.update_epochs * math.ceil(items / per_minibatch)
        # the windows' schedule keeps the original's nominal epoch (`ppo.lr_factor`); whole
        # sequences count their own steps, so the decay starts at the epoch the config names
        self.schedules = ppo.lr_schedules(config.ppo, samples, self.steps_per_epoch if whole else None)
        if config.ppo.compile and distributed.world().size > 1:
            raise ConfigError("ppo.compile runs in one process; leave it off with --nproc > 1")
        self.compiled = compiled_steps(self.model, self.optimizers, config.ppo) if config.ppo.compile else None

    def save_attention(self, tester: MetaTester, out_dir: Path) -> list[Path]:
        """One trial of the tester's first task; the attention of each step's newest memory."""
        p, task = tester.protocol, tester.tasks()[0]
        rollout = tester.sampler.collect(self.policy, [task], *tester.streams(0, [0]), p.deterministic)
        if self.config.model.memory == "whole":
            sequences = make_sequences(rollout, self.config.ppo, self.policy)
            by_age = sequence_attention_by_age(self.model, sequences.inputs, sequences.lengths)
            weights = by_age[sequences.valid.numpy()]  # (T, layers, heads, L): one env, in time order
            lengths = (sequences.valid.cumsum(1)[sequences.valid]).numpy()
        else:
            windows, lengths_t = make_windows(rollout, self.policy)
            weights, lengths = attention_by_age(self.model, windows[:, 0], lengths_t[:, 0]), lengths_t[:, 0].numpy()
        return save_attention(weights, lengths, rollout, task, out_dir)

    def update(self, rollout: Rollout, epoch: int, generator: torch.Generator) -> tuple[dict[str, float], int]:
        rollout, first_step = rollout.to(self.policy.device), epoch * self.steps_per_epoch
        optimizers, config = self.optimizers, self.config.ppo
        if self.config.model.memory == "whole":
            sequences = make_sequences(rollout, config, self.policy)
            metrics = sequence_update(self.model, optimizers.policy, optimizers.value, sequences, config, generator,
                                      self.schedules, first_step, self.sequences_per_minibatch)
            return metrics, int(sequences.valid.sum())
        batch = make_batch(rollout, config, self.policy)
        metrics = ppo_update(self.model, optimizers.policy, optimizers.value, batch, config, generator,
                             self.schedules, first_step, self.compiled)
        return metrics, len(batch)
