"""Meta-testing: trials on tasks from a held-out seed stream, return per episode index.

For in-memory learners (TrMRL, RL^2) exploring, adapting and evaluating all happen within one
trial: episode k of the trial shows the return after k episodes of experience on the task.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from trmrl.config import MemoryScope
from trmrl.sampler import Policy, TrialSampler, episode_returns
from trmrl.seeding import Stream, env_seeds, numpy_rng, torch_generator
from trmrl.tasks.base import TaskDistribution


@dataclass(frozen=True)
class Protocol:
    """Which tasks and how many episodes: tasks come from `task_stream` at `index`."""

    n_tasks: int
    episodes: int
    task_stream: Stream
    env_stream: Stream
    action_stream: Stream
    deterministic: bool = True


def during_training(n_tasks: int, episodes: int, deterministic: bool) -> Protocol:
    return Protocol(n_tasks, episodes, Stream.EVAL_TASKS, Stream.EVAL_ENVS, Stream.EVAL_ACTIONS, deterministic)


def final_test(n_tasks: int, episodes: int, deterministic: bool) -> Protocol:
    return Protocol(n_tasks, episodes, Stream.TEST_TASKS, Stream.TEST_ENVS, Stream.TEST_ACTIONS, deterministic)


class MetaTester:
    """Runs one protocol on a task distribution; reuses its envs across calls."""

    def __init__(
        self,
        distribution: TaskDistribution,
        protocol: Protocol,
        max_episode_steps: int,
        window: int,
        memory_scope: MemoryScope,
        seed: int,
    ) -> None:
        self.distribution = distribution
        self.protocol = protocol
        self.seed = seed
        self.sampler = TrialSampler(distribution, protocol.n_tasks, protocol.episodes, max_episode_steps,
                                    window, memory_scope)

    def run(self, policy: Policy, index: int = 0) -> np.ndarray:
        """Returns (n_tasks, episodes): return of episode k of the trial on each task."""
        p = self.protocol
        tasks = self.distribution.sample(numpy_rng(self.seed, p.task_stream, index), p.n_tasks)
        rollout = self.sampler.collect(
            policy, tasks, env_seeds(self.seed, p.env_stream, index, p.n_tasks),
            torch_generator(self.seed, p.action_stream, index), deterministic=p.deterministic,
        )
        return episode_returns(rollout, p.episodes)


class RandomPolicy:
    """Uniform actions in [low, high]: the floor every meta-learner must beat."""

    def __init__(self, low: np.ndarray, high: np.ndarray) -> None:
        self.low = torch.as_tensor(low, dtype=torch.float32)
        self.high = torch.as_tensor(high, dtype=torch.float32)

    def act(
        self, windows: Tensor, lengths: Tensor, generator: torch.Generator | None, deterministic: bool = False
    ) -> tuple[Tensor, Tensor, Tensor]:
        u = torch.rand((len(windows), len(self.low)), generator=generator)
        zeros = torch.zeros(len(windows))
        return self.low + u * (self.high - self.low), zeros, zeros

    def value(self, windows: Tensor, lengths: Tensor) -> Tensor:
        return torch.zeros(len(windows))


def summarize(returns: np.ndarray) -> dict[str, float]:
    """`meta_test/episode_k/return` (mean over tasks) for each episode index k."""
    means = np.nanmean(returns, axis=0)
    return {f"meta_test/episode_{k}/return": float(m) for k, m in enumerate(means)}
