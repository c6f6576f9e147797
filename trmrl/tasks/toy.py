"""point-nav: a 2-D point must reach a hidden goal on the upper half of the unit circle (by
default; the goal's radius, the arc of the circle the goals lie on and the step size are
options, `--task.goal-radius`, `--task.goal-arc`, `--task.step-size`).

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
"""Default largest move per axis per step; actions are clipped to [-1, 1] and scaled by it."""


class PointNavEnv(gym.Env[np.ndarray, np.ndarray]):
    """Observation: position (2,) if `observe_position`, else empty (0,). Action: velocity in
    [-1, 1]^2. Starts at the origin."""

    metadata = {"render_modes": []}

    def __init__(self, observe_position: bool = False, step_size: float = STEP_SIZE) -> None:
        self.observe_position = observe_position
        self.step_size = step_size
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
        self._position = self._position + self.step_size * applied
        distance = float(np.linalg.norm(self._position - self._goal))
        info = {"distance": distance, "position": self._position.copy(), "applied_action": applied}
        return self._observation(), -distance, False, False, info


class PointNav:
    """Goals r (cos a, sin a) with a ~ U[0, arc] (degrees; default r = 1, arc = 180: the upper
    half circle). No held-out set: meta-tests draw fresh goals from their own stream."""

    held_out = False
    reports_success = False

    def __init__(self, observe_position: bool = False, goal_radius: float = 1.0, goal_arc: float = 180.0,
                 step_size: float = STEP_SIZE) -> None:
        self.observe_position = observe_position
        self.goal_radius, self.goal_arc, self.step_size = goal_radius, goal_arc, step_size
        self.name = "point-nav-xy" if observe_position else "point-nav"

    def sample(self, rng: np.random.Generator, n: int, split: Split) -> Sequence[Task]:
        angles = rng.uniform(0.0, np.radians(self.goal_arc), size=n)
        r = self.goal_radius
        return [Task("goal", (float(r * np.cos(a)), float(r * np.sin(a)))) for a in angles]

    def make_env(self) -> PointNavEnv:
        return PointNavEnv(self.observe_position, self.step_size)

    def oracle_returns(self, tasks: Sequence[Task], episodes: int, max_episode_steps: int) -> np.ndarray:
        """Return per task and episode (n, episodes) of a greedy agent that knows the goal: every
        step it moves as far towards the goal as the per-axis limit allows, and stops on it. The
        top of the scale an adapting agent can reach (it must first find the goal)."""
        out = np.zeros((len(tasks), episodes))
        for i, task in enumerate(tasks):
            env = self.make_env()
            env.set_task(task)
            goal = np.asarray(task.params)
            env.reset()
            position, total = np.zeros(2), 0.0
            for _ in range(max_episode_steps):
                _, reward, _, _, info = env.step((goal - position) / self.step_size)
                position, total = info["position"], total + reward
            out[i] = total  # every episode of a trial starts at the origin: the same return
        return out
