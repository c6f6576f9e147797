"""point-nav: a 2-D point must reach a hidden goal on the upper half of the unit circle.

The reward is minus the distance to the goal, so a single step tells the agent only how far the
goal is, not where: locating it needs the rewards of several past steps (memory). Pure numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from trmrl.tasks.base import Task

STEP_SIZE = 0.1
"""Largest move per axis per step; actions are clipped to [-1, 1] and scaled by this."""


class PointNavEnv(gym.Env[np.ndarray, np.ndarray]):
    """Observation: position (2,). Action: velocity in [-1, 1]^2. Starts at the origin."""

    metadata = {"render_modes": []}

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float64)
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
        return self._position.copy(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self._position = self._position + STEP_SIZE * np.clip(action, -1.0, 1.0)
        distance = float(np.linalg.norm(self._position - self._goal))
        return self._position.copy(), -distance, False, False, {"distance": distance}


class PointNav:
    """Goals (cos a, sin a) with a ~ U[0, pi]."""

    name = "point-nav"

    def sample(self, rng: np.random.Generator, n: int) -> Sequence[Task]:
        angles = rng.uniform(0.0, np.pi, size=n)
        return [Task("goal", (float(np.cos(a)), float(np.sin(a)))) for a in angles]

    def make_env(self) -> PointNavEnv:
        return PointNavEnv()
