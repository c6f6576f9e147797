"""The task seam: what a task is, the env that plays it, and a distribution over tasks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np

Split = Literal["train", "test"]
"""Which tasks to draw: the training tasks, or the held-out ones the evaluator uses."""


@dataclass(frozen=True)
class Task:
    """One task. `name` groups tasks in logs (e.g. 'forward', or a MetaWorld class); `params`
    are its hidden parameters as numbers, written to meta-test results (a goal, a velocity);
    `payload` is whatever else the env needs to set it, opaque to everything but that env (e.g.
    a pickled MetaWorld task)."""

    name: str
    params: tuple[float, ...] = ()
    payload: Any = field(default=None, repr=False)


@runtime_checkable
class TaskEnv(Protocol):
    """A gymnasium env without a time limit whose hidden task can be changed between episodes.
    It may report `info["success"]` and `info["applied_action"]` (what it actually applied)."""

    observation_space: gym.spaces.Box
    action_space: gym.spaces.Box

    def set_task(self, task: Task) -> None: ...

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]: ...

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]: ...


class TaskDistribution(Protocol):
    """A distribution over tasks that share one env (observation and action spaces). It may also
    be a `TaskList` (a fixed list of tasks per split) and `HasOracle` (a goal-knowing agent's
    returns)."""

    name: str
    held_out: bool
    """True: `sample(..., "test")` draws from tasks never drawn for training (MetaWorld's test
    goals and classes). False: there is one distribution; the evaluator then draws fresh tasks
    from a random stream that training never uses."""
    reports_success: bool
    """True: the env reports `info["success"]`, and meta-tests count success per episode."""

    def sample(self, rng: np.random.Generator, n: int, split: Split) -> Sequence[Task]:
        """n tasks of `split` drawn with `rng` (the only source of randomness)."""
        ...

    def make_env(self) -> TaskEnv:
        """A fresh env; call `set_task` before its first reset."""
        ...


@runtime_checkable
class TaskList(Protocol):
    """A distribution with a fixed list of tasks per split (MetaWorld's goals and classes): the
    protocols over every held-out task run it."""

    def tasks(self, split: Split) -> list[Task]: ...


@runtime_checkable
class HasOracle(Protocol):
    """A distribution that can say what a goal-knowing agent returns (point-nav's greedy mover):
    the top of the scale the evaluator draws beside an agent."""

    def oracle_returns(self, tasks: Sequence[Task], episodes: int, max_episode_steps: int) -> np.ndarray:
        """(n tasks, episodes) returns."""
        ...
