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
from trmrl.attention import save_attention
from trmrl.config import OnPolicyConfig, PPOConfig, TrainConfig
from trmrl.memory import Window, gather_windows
from trmrl.nets.policy import ActorCritic, MemoryScope, ModelConfig
from trmrl.protocols import Starts, Step
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
        out = self.model(state.buffer, state.length)
        if deterministic:
            action = out.mean
        else:
            assert generators is not None, "sampled actions need one generator per env"
            action = out.mean + out.log_std.exp() * random_rows(generators, out.mean.shape[1:], device=self.device)
        return Step(action, out.log_prob(action), out.value), state

    @torch.no_grad()
    def value(self, inputs: Tensor, state: Window, starts: Starts) -> Tensor:
        state = self._pushed(inputs, state, starts)
        return self.model.value(state.buffer, state.length)


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


def ppo_update(
    model: ActorCritic,
    policy_optimizer: torch.optim.Optimizer,
    value_optimizer: torch.optim.Optimizer,
    batch: Batch,
    config: PPOConfig,
    generator: torch.Generator,
    schedules: tuple[ppo.LRSchedule, ppo.LRSchedule],
    first_step: int,
) -> dict[str, float]:
    """`ppo.ppo_update` over the epoch's windows, each an independent sample."""

    def policy_terms(index: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        out = model(batch.windows[index], batch.lengths[index])
        return out.log_prob(batch.actions[index]), batch.log_probs[index], batch.advantages[index], out.entropy()

    def value_terms(index: Tensor) -> tuple[Tensor, Tensor]:
        return model.value(batch.windows[index], batch.lengths[index]), batch.returns[index]

    stats = ppo.ppo_update(
        len(batch), config.minibatch_size,
        (ppo.Phase(policy_optimizer, list(model.policy_parameters()), schedules[0]), policy_terms),
        (ppo.Phase(value_optimizer, list(model.value_parameters()), schedules[1]), value_terms),
        model.value_log_std, config, generator, first_step, lambda index: batch.advantages[index])
    stats["losses/explained_variance"] = ppo.explained_variance(batch.values, batch.returns)
    with torch.no_grad():
        stats["losses/entropy"] = float(model(batch.windows[:1], batch.lengths[:1]).entropy())
        stats["charts/action_std"] = float(model.log_std.exp().mean())
    return stats


class TrMRL(InMemoryPPO):
    """`Algorithm`: the model, its two optimisers (policy phase, value phase) and its sampler."""

    Config: ClassVar[type[TrMRLAgent]] = TrMRLAgent
    """This algorithm's part of a run's config."""

    def __init__(self, config: TrainConfig, distribution: TaskDistribution) -> None:
        self.config = config
        t = config.task
        self.sampler = TrialSampler(distribution, distributed.share_size(t.tasks_per_epoch), t.episodes_per_trial,
                                    t.max_episode_steps, t.vector_env)
        self.model = ActorCritic(self.sampler.obs_dim, self.sampler.act_dim, config.model,
                                 torch_generator(config.seed, Stream.INIT)).to(distributed.device())
        self.optimizers = TwoPhaseOptimizers.create(self.model, config.ppo)
        self.policy = TrMRLPolicy(self.model, config.model.memory_scope)
        samples = t.tasks_per_epoch * t.steps_per_trial
        self.schedules = ppo.lr_schedules(config.ppo, samples)
        # gradient steps per phase and epoch: the LR schedule's clock, derived, so resuming needs no counter
        self.steps_per_epoch = config.ppo.update_epochs * math.ceil(samples / config.ppo.minibatch_size)

    def save_attention(self, tester: MetaTester, out_dir: Path) -> list[Path]:
        """One trial of the tester's first task; the attention of each step's newest memory."""
        p, task = tester.protocol, tester.tasks()[0]
        rollout = tester.sampler.collect(self.policy, [task], *tester.streams(0, [0]), p.deterministic)
        windows, lengths = make_windows(rollout, self.policy)
        return save_attention(self.model, rollout, windows, lengths, task, out_dir)

    def update(self, rollout: Rollout, epoch: int, generator: torch.Generator) -> tuple[dict[str, float], int]:
        batch = make_batch(rollout.to(self.policy.device), self.config.ppo, self.policy)
        metrics = ppo_update(self.model, self.optimizers.policy, self.optimizers.value, batch, self.config.ppo,
                             generator, self.schedules, epoch * self.steps_per_epoch)
        return metrics, len(batch)
