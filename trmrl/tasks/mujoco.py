"""The paper's MuJoCo task distributions on gymnasium's v5 models (docs/paper.md section 3).

dt = 0.05 (model timestep 0.01, frame skip 5). No time limit here: the trial env applies it.
Rewards use the raw policy action; MuJoCo clamps the control to ctrlrange itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium.envs.mujoco.mujoco_env import MujocoEnv

from trmrl.tasks.base import Split, Task

RESET_NOISE = 0.1
"""qpos + U(-0.1, 0.1), qvel + 0.1 N(0, 1) at every reset, as in the original envs."""


class _TaskMujocoEnv(MujocoEnv):
    metadata = {"render_modes": ["human", "rgb_array", "depth_array", "rgbd_tuple"], "render_fps": 20}

    def __init__(self, model_file: str, obs_dim: int) -> None:
        space = gym.spaces.Box(-np.inf, np.inf, shape=(obs_dim,), dtype=np.float64)
        super().__init__(model_file, frame_skip=5, observation_space=space)
        self.task: Task | None = None

    def set_task(self, task: Task) -> None:
        self.task = task

    def reset_model(self) -> np.ndarray:
        noise = RESET_NOISE
        qpos = self.init_qpos + self.np_random.uniform(-noise, noise, size=self.model.nq)
        qvel = self.init_qvel + noise * self.np_random.standard_normal(self.model.nv)
        self.set_state(qpos, qvel)
        return self._get_obs()

    def _step_mujoco_simulation(self, ctrl: np.ndarray, n_frames: int) -> None:
        # gymnasium also runs mj_rnePostConstraint to fill contact forces; no reward here uses
        # them (the original's Ant contact cost was identically zero), so skip that cost.
        self.data.ctrl[:] = ctrl
        mujoco.mj_step(self.model, self.data, nstep=n_frames)

    def _get_obs(self) -> np.ndarray:
        raise NotImplementedError


class HalfCheetahTaskEnv(_TaskMujocoEnv):
    """Observation (20,): qpos[1:] (8), qvel (9), torso position xyz (3).

    Task kinds: 'velocity' r = -|v_x - v*| - 0.05 |a|^2; 'forward'/'backward'
    r = d v_x - 0.05 |a|^2 with d = +1/-1. Never terminates.
    """

    CTRL_COST = 0.05

    def __init__(self) -> None:
        super().__init__("half_cheetah.xml", obs_dim=20)

    def _get_obs(self) -> np.ndarray:
        return np.concatenate([self.data.qpos[1:], self.data.qvel, self.data.body("torso").xpos])

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        assert self.task is not None, "set_task before stepping"
        x_before = self.data.qpos[0]
        self.do_simulation(action, self.frame_skip)
        velocity = (self.data.qpos[0] - x_before) / self.dt
        ctrl_cost = self.CTRL_COST * float(np.square(action).sum())
        if self.task.name == "velocity":
            progress = -abs(velocity - self.task.params[0])
        else:
            progress = self.task.params[0] * velocity
        info = {"velocity": velocity, "progress": progress, "ctrl_cost": ctrl_cost}
        return self._get_obs(), float(progress - ctrl_cost), False, False, info


class AntDirEnv(_TaskMujocoEnv):
    """Observation (27,): qpos[2:] (13), qvel (14). Task: angle theta (radians).

    r = v_xy . (cos theta, sin theta) - 0.5 |a|^2 + 1; terminates when the state is not finite
    or the torso height leaves [0.2, 1.0].
    """

    CTRL_COST = 0.5
    HEALTHY_REWARD = 1.0
    HEALTHY_Z = (0.2, 1.0)

    def __init__(self) -> None:
        super().__init__("ant.xml", obs_dim=27)

    def _get_obs(self) -> np.ndarray:
        return np.concatenate([self.data.qpos[2:], self.data.qvel])

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        assert self.task is not None, "set_task before stepping"
        xy_before = self.data.body("torso").xpos[:2].copy()
        self.do_simulation(action, self.frame_skip)
        velocity = (self.data.body("torso").xpos[:2] - xy_before) / self.dt
        theta = self.task.params[0]
        progress = float(velocity @ np.array([np.cos(theta), np.sin(theta)]))
        ctrl_cost = self.CTRL_COST * float(np.square(action).sum())
        state = self.state_vector()
        low, high = self.HEALTHY_Z
        terminated = not (np.isfinite(state).all() and low <= state[2] <= high)
        info = {"progress": progress, "ctrl_cost": ctrl_cost}
        reward = progress - ctrl_cost + self.HEALTHY_REWARD
        return self._get_obs(), reward, terminated, False, info


class CheetahVel:
    """Target velocity v* ~ U[low, high]; the paper trains on [0, 3] and tests OOD on [3, 4].
    No held-out set: meta-tests draw fresh velocities from their own stream."""

    held_out = False
    reports_success = False

    def __init__(self, low: float = 0.0, high: float = 3.0, name: str = "cheetah-vel") -> None:
        self.low, self.high, self.name = low, high, name

    def sample(self, rng: np.random.Generator, n: int, split: Split) -> Sequence[Task]:
        return [Task("velocity", (float(v),)) for v in rng.uniform(self.low, self.high, size=n)]

    def make_env(self) -> HalfCheetahTaskEnv:
        return HalfCheetahTaskEnv()


class Direction:
    """A direction drawn from {-1, +1} with probability 1/2 each, named for per-task logs. Both
    directions are trained on and tested on (no held-out set)."""

    held_out = False
    reports_success = False

    def __init__(self, name: str, make_env: Callable[[], _TaskMujocoEnv], labels: tuple[str, str]) -> None:
        self.name, self._make_env, self._labels = name, make_env, labels

    def sample(self, rng: np.random.Generator, n: int, split: Split) -> Sequence[Task]:
        signs = rng.choice([-1.0, 1.0], size=n)
        return [Task(self._labels[0] if d > 0 else self._labels[1], (float(d),)) for d in signs]

    def make_env(self) -> _TaskMujocoEnv:
        return self._make_env()


def cheetah_dir() -> Direction:
    """HalfCheetahDir: run forward (d = +1) or backward (d = -1)."""
    return Direction("cheetah-dir", HalfCheetahTaskEnv, ("forward", "backward"))


def ant_dir() -> Direction:
    """AntDir: angle theta in {-1, +1} radians, the original code's convention (from VariBAD),
    i.e. +-57.3 degrees from the x axis, not forward/backward."""
    return Direction("ant-dir", AntDirEnv, ("left", "right"))
