"""Vectorised trial collection: B tasks stepped together, the policy batched over B each step.

The interface is deliberately small - policy (weights) and tasks in, `Rollout` out - so the
same call can later run on remote workers without touching the algorithm.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from trmrl.errors import DivergenceError
from trmrl.protocols import Policy, Starts
from trmrl.tasks.base import Task, TaskDistribution
from trmrl.trial import TrialEnv


@dataclass
class Rollout:
    """T steps of B trials (one task each). Every tensor is (T, B, ...).

    obs[t] is what the trial env gave at step t; the flags say what happened *after* step t's
    action, except the two start flags, which say where step t begins an episode / a trial.
    """

    obs: Tensor  # (T, B, O) augmented observations [s_t, a_{t-1}, r_{t-1}, d_{t-1}]
    actions: Tensor  # (T, B, A) actions sent to the envs
    log_probs: Tensor  # (T, B) log pi(a_t | memory_t) at sampling time
    values: Tensor  # (T, B) V at sampling time
    rewards: Tensor  # (T, B)
    episode_start: Tensor  # (T, B) bool: step t is the first of an episode
    trial_start: Tensor  # (T, B) bool: step t is the first of a trial
    episode_end: Tensor  # (T, B) bool: the episode ended after step t (termination or time limit)
    terminated: Tensor  # (T, B) bool: ... by a true termination
    trial_end: Tensor  # (T, B) bool: the trial ended after step t
    bootstrap_values: Tensor  # (T, B) V(final observation) where an episode hit its time limit
    # after step t; 0 elsewhere
    cut_values: Tensor  # (B,) V of the input after step T-1 where the rollout stopped inside a
    # trial (the trial goes on: what it bootstraps from); 0 where the trial ended at T-1
    success: Tensor | None = None  # (T, B) bool: the env reported info["success"] after step t

    @property
    def num_steps(self) -> int:
        return self.rewards.numel()


def rollout_metrics(rollout: Rollout) -> dict[str, float]:
    """Mean return of the episodes and trials that ended in this rollout."""
    episodes = int(rollout.episode_end.sum())
    trials = int(rollout.trial_end.sum())
    total = float(rollout.rewards.sum())
    return {"charts/episode_return": total / max(episodes, 1), "charts/trial_return": total / max(trials, 1),
            "charts/episodes": float(episodes)}


def epoch_metrics(rollout: Rollout, samples: int, sampling: float, update: float) -> dict[str, float]:
    """Returns of the rollout and the epoch's timing: seconds sampling and updating, env steps/s
    sampled and update samples/s."""
    return rollout_metrics(rollout) | {
        "time/sampling": sampling, "time/update": update,
        "charts/sampling_sps": rollout.num_steps / sampling, "charts/update_samples_per_s": samples / update}


class TrialSampler:
    """B trial envs of one task distribution, stepped in lockstep; the policy is called once per
    step on all B, and its state is carried from step to step without being looked into."""

    def __init__(
        self, distribution: TaskDistribution, n_envs: int, episodes_per_trial: int, max_episode_steps: int
    ) -> None:
        self.envs = [TrialEnv(distribution.make_env(), episodes_per_trial, max_episode_steps) for _ in range(n_envs)]
        self.steps_per_trial = episodes_per_trial * max_episode_steps
        self.obs_dim = self.envs[0].observation_space.shape[0]
        self.act_dim = self.envs[0].action_space.shape[0]

    def collect(
        self,
        policy: Policy[Any],
        tasks: Sequence[Task],
        env_seeds: Sequence[int],
        generators: Sequence[torch.Generator] | None,
        deterministic: bool = False,
        steps: int | None = None,
    ) -> Rollout:
        """One trial per task (a new trial on the same task starts if one ends early), for
        `steps` steps (default: E * H). Env b resets from env_seeds[b] and acts with
        generators[b] (`seeding.task_streams`), so its data depend on its task's stream alone:
        B tasks collected at once equal the same tasks collected in any split."""
        n = len(tasks)
        if n > len(self.envs):
            raise ValueError(f"{n} tasks but only {len(self.envs)} envs")
        envs = self.envs[:n]
        steps = self.steps_per_trial if steps is None else steps

        obs = torch.zeros(steps, n, self.obs_dim)
        actions = torch.zeros(steps, n, self.act_dim)
        log_probs, values, rewards, bootstrap = (torch.zeros(steps, n) for _ in range(4))
        flags = {k: torch.zeros(steps, n, dtype=torch.bool) for k in
                 ("episode_start", "trial_start", "episode_end", "terminated", "trial_end", "success")}
        success = np.zeros(n, dtype=bool)

        current = np.stack([env.reset(seed=s, options={"task": task})[0]
                            for env, s, task in zip(envs, env_seeds, tasks)])
        starts = Starts(episode=torch.ones(n, dtype=torch.bool), trial=torch.ones(n, dtype=torch.bool))
        state = policy.initial_state(n)
        step_rewards = np.zeros(n)
        final = np.zeros_like(current)
        episode_end = np.zeros(n, dtype=bool)
        terminated = np.zeros(n, dtype=bool)
        trial_end = np.zeros(n, dtype=bool)
        no_start = Starts(episode=torch.zeros(n, dtype=torch.bool), trial=torch.zeros(n, dtype=torch.bool))
        for t in range(steps):
            x = torch.from_numpy(current)
            step, state = policy.act(x, state, starts, generators, deterministic)
            if not torch.isfinite(step.actions).all():
                raise DivergenceError("the policy produced a non-finite action")
            obs[t], actions[t], log_probs[t], values[t] = x, step.actions, step.log_probs, step.values
            flags["episode_start"][t], flags["trial_start"][t] = starts.episode, starts.trial

            action_np = step.actions.double().numpy()
            for b, env in enumerate(envs):
                nxt, step_rewards[b], term, trunc, info = env.step(action_np[b])
                episode_end[b], terminated[b] = info["episode_end"], info["episode_terminated"]
                success[b] = bool(info.get("success", False))
                trial_end[b] = term or trunc
                final[b] = info.get("final_observation", nxt)
                current[b] = env.reset(options={"task": tasks[b]})[0] if trial_end[b] else nxt
            rewards[t] = torch.from_numpy(step_rewards)
            flags["episode_end"][t] = torch.from_numpy(episode_end)
            flags["terminated"][t] = torch.from_numpy(terminated)
            flags["trial_end"][t] = torch.from_numpy(trial_end)
            flags["success"][t] = torch.from_numpy(success)

            # Time limits are truncations: keep V(final observation) to bootstrap from. The final
            # observation continues the episode that just ended, so nothing starts there.
            truncated = flags["episode_end"][t] & ~flags["terminated"][t]
            if truncated.any():
                with torch.no_grad():
                    v_final = policy.value(torch.from_numpy(final), state, no_start)
                bootstrap[t] = torch.where(truncated, v_final, 0.0)
            starts = Starts(episode=flags["episode_end"][t].clone(), trial=flags["trial_end"][t].clone())

        # A trial still running when the rollout stops (early terminations restarted it, e.g.
        # ant-dir) is cut off by the rollout, not by the task: keep V of what comes next.
        running = ~flags["trial_end"][-1]
        cut_values = torch.zeros(n)
        if running.any():
            with torch.no_grad():
                cut_values = torch.where(running, policy.value(torch.from_numpy(current), state, starts), 0.0)
        return Rollout(obs, actions, log_probs, values, rewards, bootstrap_values=bootstrap, cut_values=cut_values,
                       **flags)


def _first_trial_episodes(rollout: Rollout, n_episodes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keep, task, episode) index arrays over (T, B) steps of each task's first trial."""
    in_first_trial = (rollout.trial_start.long().cumsum(0) == 1).numpy()
    episode = rollout.episode_start.long().cumsum(0).numpy() - 1
    keep = in_first_trial & (episode < n_episodes)
    task = np.broadcast_to(np.arange(episode.shape[1]), episode.shape)
    return keep, task[keep], episode[keep]


def episode_returns(rollout: Rollout, n_episodes: int) -> np.ndarray:
    """Return of each episode of each task's first trial, by episode index: (B, n_episodes).

    Episodes the rollout did not reach are NaN.
    """
    keep, task, episode = _first_trial_episodes(rollout, n_episodes)
    out = np.zeros((rollout.rewards.shape[1], n_episodes))
    reached = np.zeros_like(out, dtype=bool)
    np.add.at(out, (task, episode), rollout.rewards.numpy()[keep])
    reached[task, episode] = True
    return np.where(reached, out, np.nan)


def episode_successes(rollout: Rollout, n_episodes: int) -> np.ndarray:
    """1 where an episode of the first trial reported success at any step, else 0 (NaN where
    not reached): (B, n_episodes)."""
    keep, task, episode = _first_trial_episodes(rollout, n_episodes)
    out = np.full((rollout.rewards.shape[1], n_episodes), np.nan)
    out[task, episode] = 0.0
    success = rollout.success if rollout.success is not None else torch.zeros_like(rollout.trial_end)
    hit = success.numpy()[keep]
    out[task[hit], episode[hit]] = 1.0
    return out


def first_episode_rewards(rollout: Rollout, length: int) -> np.ndarray:
    """Per-step reward of each task's first episode, (B, length); NaN after an early end."""
    keep, task, episode = _first_trial_episodes(rollout, 1)
    step = np.broadcast_to(np.arange(rollout.rewards.shape[0])[:, None], rollout.rewards.shape)[keep]
    out = np.full((rollout.rewards.shape[1], length), np.nan)
    inside = step < length
    out[task[inside], step[inside]] = rollout.rewards.numpy()[keep][inside]
    return out
