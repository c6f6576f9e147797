"""point-nav: a 2-D point must reach a hidden goal on the upper half of the unit circle.

The reward is minus the distance to the goal, so a single step tells the agent only how far the
goal is, not where. By default the point does not observe its position either: its only inputs
are its own past actions (moves) and rewards (distances), so locating the goal means
triangulating from several remembered steps. (With the position observed, the current distance
alone narrows the goal to two mirror candidates, and a memoryless agent does almost as well.)
Pure numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from trmrl.tasks.base import Split, Task

STEP_SIZE = 0.1
"""Largest move per axis per step; actions are clipped to [-1, 1] and scaled by this."""


class PointNavEnv(gym.Env[np.ndarray, np.ndarray]):
    """Observation: position (2,) if `observe_position`, else empty (0,). Action: velocity in
    [-1, 1]^2. Starts at the origin."""

    metadata = {"render_modes": []}

    def __init__(self, observe_position: bool = False) -> None:
        self.observe_position = observe_position
        shape = (2,) if observe_position else (0,)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=shape, dtype=np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float64)
        self._goal = np.zeros(2)
        self._position = np.zeros(2)

    def set_task(self, task: Task) -> None:
        self._goal = np.asarray(task.params, dtype=np.float64)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._position = np.zeros(2)
        return self._observation(), {}

    def _observation(self) -> np.ndarray:
        return self._position.copy() if self.observe_position else np.zeros(0)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        applied = np.clip(action, -1.0, 1.0)
        self._position = self._position + STEP_SIZE * applied
        distance = float(np.linalg.norm(self._position - self._goal))
        info = {"distance": distance, "position": self._position.copy(), "applied_action": applied}
        return self._observation(), -distance, False, False, info


class PointNav:
    """Goals (cos a, sin a) with a ~ U[0, pi]. No held-out set: meta-tests draw fresh goals from
    their own stream."""

    held_out = False
    reports_success = False

    def __init__(self, observe_position: bool = False) -> None:
        self.observe_position = observe_position
        self.name = "point-nav-xy" if observe_position else "point-nav"

    def sample(self, rng: np.random.Generator, n: int, split: Split) -> Sequence[Task]:
        angles = rng.uniform(0.0, np.pi, size=n)
        return [Task("goal", (float(np.cos(a)), float(np.sin(a)))) for a in angles]

    def make_env(self) -> PointNavEnv:
        return PointNavEnv(self.observe_position)
