"""What a task distribution is: tasks drawn from an explicit generator, and an env that can be
pointed at any of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np


@dataclass(frozen=True)
class Task:
    """One task: a name for per-task-name logs (e.g. 'forward') and its hidden parameters."""

    name: str
    params: tuple[float, ...]


@runtime_checkable
class TaskEnv(Protocol):
    """A gymnasium env without a time limit whose hidden task can be changed between episodes."""

    observation_space: gym.spaces.Box
    action_space: gym.spaces.Box

    def set_task(self, task: Task) -> None: ...

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]: ...

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]: ...


class TaskDistribution(Protocol):
    """A distribution over tasks that share one env (observation and action spaces)."""

    name: str

    def sample(self, rng: np.random.Generator, n: int) -> Sequence[Task]:
        """n tasks drawn i.i.d. with `rng` (the only source of randomness)."""
        ...

    def make_env(self) -> TaskEnv:
        """A fresh env; call `set_task` before its first reset."""
        ...
