"""One env = one trial of E episodes on one task, with the RL^2 inputs.

The observation at step t is the augmented observation [s_t, a_{t-1}, r_{t-1}, d_{t-1}]:
`d_{t-1}` = 1 on the first step of every episode after the first one of the trial (the real
episode-boundary flag; the original code fed a constant 0). At a trial start a, r, d are zeros.
At a later episode start a and r are those of the previous episode's last step: the env reports
what happened, and a policy whose memory must not span episodes (TrMRL's `episode` scope, the
original code) hides them with `forget_previous_episode`.

`a_{t-1}` is the action the env reports it applied (`info["applied_action"]`, e.g. point-nav's
clipped move) and otherwise the raw policy sample (the original MuJoCo setup, where MuJoCo
clamps the control itself).

The gymnasium episode of this env is the whole trial: it terminates when the last episode
truly terminates and is truncated when the last episode hits the time limit. Inner episode ends
are reported in `info` (`episode_end`, `episode_terminated`, `final_observation`).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from trmrl.tasks.base import Task, TaskEnv


def augmented_dim(obs_dim: int, act_dim: int) -> int:
    """O = obs_dim + act_dim + 2 (reward and boundary flag)."""
    return obs_dim + act_dim + 2


def forget_previous_episode(inputs: Tensor, episode_start: Tensor, act_dim: int) -> Tensor:
    """Zero a_{t-1} and r_{t-1} where a new episode starts, so that nothing of the previous
    episode reaches the policy (the boundary flag stays). inputs (..., O), episode_start (...)."""
    if not episode_start.any():  # most sampler steps: nothing to hide
        return inputs
    obs_dim = inputs.shape[-1] - act_dim - 2
    carried = torch.zeros(inputs.shape[-1], dtype=torch.bool, device=inputs.device)
    carried[obs_dim : obs_dim + act_dim + 1] = True
    return inputs.masked_fill(episode_start[..., None] & carried, 0.0)


class TrialEnv(gym.Env[np.ndarray, np.ndarray]):
    metadata = {"render_modes": []}

    def __init__(
        self,
        env: TaskEnv,
        episodes_per_trial: int,
        max_episode_steps: int,
        task: Task | None = None,
        min_episodes: int | None = None,
    ) -> None:
        self.env = env
        self.episodes_per_trial = episodes_per_trial
        # with `min_episodes`, each trial draws its number of episodes uniformly from
        # min_episodes..episodes_per_trial, from this env's own seeded stream
        self.episode_range = (min_episodes or episodes_per_trial, episodes_per_trial)
        self._episodes = episodes_per_trial
        self.max_episode_steps = max_episode_steps
        self.task = task
        self.obs_dim = env.observation_space.shape[0]
        self.act_dim = env.action_space.shape[0]
        self.action_space = env.action_space
        dim = augmented_dim(self.obs_dim, self.act_dim)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(dim,), dtype=np.float32)
        self._episode = 0
        self._step_in_episode = 0

    def _augment(self, obs: np.ndarray, action: np.ndarray | None, reward: float, flag: float) -> np.ndarray:
        out = np.zeros(self.observation_space.shape, dtype=np.float32)
        out[: self.obs_dim] = obs
        if action is not None:
            out[self.obs_dim : self.obs_dim + self.act_dim] = action
            out[-2] = reward
        out[-1] = flag
        return out

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a trial; `options={"task": task}` switches the task first."""
        super().reset(seed=seed)
        if options and "task" in options:
            self.task = options["task"]
        if self.task is None:
            raise ValueError("TrialEnv needs a task: pass options={'task': task} to reset")
        self.env.set_task(self.task)
        obs, _ = self.env.reset(seed=seed)
        low, high = self.episode_range
        self._episodes = high if low == high else int(self.np_random.integers(low, high + 1))
        self._episode = 0
        self._step_in_episode = 0
        return self._augment(obs, None, 0.0, 0.0), {"episode_index": 0}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._step_in_episode += 1
        truncated = truncated or self._step_in_episode >= self.max_episode_steps
        info = dict(info, episode_index=self._episode, episode_end=terminated or truncated,
                    episode_terminated=terminated)
        # An env that changes the action before applying it (e.g. clips it) reports what it applied,
        # and that is what the agent remembers; otherwise the raw action (the original MuJoCo setup).
        action = info.get("applied_action", action)
        last = self._augment(obs, action, reward, 0.0)
        if not info["episode_end"]:
            return last, float(reward), False, False, info
        self._episode += 1
        if self._episode == self._episodes:
            return last, float(reward), terminated, not terminated, info
        # The trial goes on: the next observation starts a new episode on the same task.
        info["final_observation"] = last
        obs, _ = self.env.reset()
        self._step_in_episode = 0
        return self._augment(obs, action, reward, 1.0), float(reward), False, False, info
