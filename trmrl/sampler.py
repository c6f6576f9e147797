"""Vectorised trial collection: B tasks stepped together, the policy batched over B each step.

The interface is deliberately small - policy (weights) and tasks in, `Rollout` out - so the
same call can later run on remote workers without touching the algorithm.
"""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from trmrl.config import TaskConfig
from trmrl.errors import DivergenceError
from trmrl.protocols import Policy, Starts
from trmrl.rollout import Rollout
from trmrl.tasks.base import Task, TaskDistribution
from trmrl.trial import TrialEnv


def ended_within(flags: Tensor) -> Tensor:
    """(T, B) bool: step t belongs to an episode (or trial) that ended within the rollout, i.e.
    `flags` (its end flags) is set at t or later in the same column."""
    return flags.flip(0).cumsum(0).flip(0) > 0


def rollout_metrics(rollout: Rollout, action_bounds: tuple[Tensor, Tensor] | None = None) -> dict[str, float]:
    """Mean return of the episodes and trials that ended in this rollout (the steps of one still
    running when it stopped, e.g. a trial restarted after an early termination, count in neither);
    where the tasks report success, the fraction of those episodes that succeeded at any step; and,
    given the action space's (low, high), the fraction of action components outside it."""
    episodes = int(rollout.episode_end.sum())
    trials = int(rollout.trial_end.sum())
    in_episode, in_trial = ended_within(rollout.episode_end), ended_within(rollout.trial_end)
    metrics = {"charts/episode_return": float(rollout.rewards[in_episode].sum()) / max(episodes, 1),
               "charts/trial_return": float(rollout.rewards[in_trial].sum()) / max(trials, 1),
               "charts/episodes": float(episodes)}
    if rollout.success is not None:
        # one id per (env, episode); an episode counts once however many of its steps succeed
        episode = rollout.episode_start.long().cumsum(0)
        ids = episode * rollout.rewards.shape[1] + torch.arange(rollout.rewards.shape[1])
        succeeded = len(torch.unique(ids[rollout.success.bool() & in_episode]))
        metrics["charts/success"] = succeeded / max(episodes, 1)
    if action_bounds is not None:
        # The env clips these: every sample beyond a bound acts alike, so a Gaussian mean that has
        # left the box gets no signal from the returns to come back (a stuck policy shows it).
        low, high = action_bounds
        metrics["charts/actions_clipped"] = float(((rollout.actions < low) | (rollout.actions > high)).float().mean())
    return metrics


def epoch_metrics(rollout: Rollout, samples: int, sampling: float, update: float,
                  action_bounds: tuple[Tensor, Tensor] | None = None) -> dict[str, float]:
    """Returns of the rollout (`rollout_metrics`) and the epoch's timing: seconds sampling and
    updating, env steps/s sampled and update samples/s."""
    return rollout_metrics(rollout, action_bounds) | {
        "time/sampling": sampling, "time/update": update,
        "charts/sampling_sps": rollout.num_steps / sampling, "charts/update_samples_per_s": samples / update}


VectorEnvKind = Literal["sync", "async", "split"]


def _trial_env(distribution: TaskDistribution, episodes_per_trial: int, max_episode_steps: int,
               min_episodes: int | None = None) -> TrialEnv:
    return TrialEnv(distribution.make_env(), episodes_per_trial, max_episode_steps, min_episodes=min_episodes)


@dataclass
class EnvStep:
    """One step of B trial envs, (B, ...) arrays. Where a trial ended, `next_obs` already starts
    the next trial on the same task and `final_obs` is the ended trial's last observation; where
    an inner episode ended, `final_obs` is that episode's last one; elsewhere it is `next_obs`."""

    next_obs: np.ndarray  # (B, O) float32
    final_obs: np.ndarray  # (B, O) float32
    rewards: np.ndarray  # (B,)
    episode_end: np.ndarray  # (B,) bool
    terminated: np.ndarray  # (B,) bool
    trial_end: np.ndarray  # (B,) bool
    success: np.ndarray  # (B,) bool: the env reported info["success"]


class EnvBatch(Protocol):
    """B trial envs stepped together; `reset` starts one trial per task on the first len(tasks)."""

    observation_space: gym.spaces.Box
    action_space: gym.spaces.Box

    def __len__(self) -> int: ...

    def reset(self, tasks: Sequence[Task], seeds: Sequence[int]) -> np.ndarray: ...

    def step(self, actions: np.ndarray) -> EnvStep: ...

    def close(self) -> None: ...


class InProcessEnvs:
    """The trial envs in this process, stepped one after the other (cheap simulators: the
    stepping costs less than handing data to other processes)."""

    def __init__(self, make: Callable[[], TrialEnv], n: int) -> None:
        self.envs = [make() for _ in range(n)]
        self.observation_space, self.action_space = self.envs[0].observation_space, self.envs[0].action_space
        self._tasks: Sequence[Task] = ()

    def __len__(self) -> int:
        return len(self.envs)

    def reset(self, tasks: Sequence[Task], seeds: Sequence[int]) -> np.ndarray:
        self._tasks = tasks
        return np.stack([env.reset(seed=s, options={"task": task})[0] for env, s, task in zip(self.envs, seeds, tasks)])

    def step(self, actions: np.ndarray) -> EnvStep:
        n = len(self._tasks)
        next_obs = np.zeros((n, *self.observation_space.shape), dtype=np.float32)
        final = np.zeros_like(next_obs)
        rewards = np.zeros(n)
        episode_end, terminated, trial_end, success = (np.zeros(n, dtype=bool) for _ in range(4))
        for b, env in enumerate(self.envs[:n]):
            nxt, rewards[b], term, trunc, info = env.step(actions[b])
            episode_end[b], terminated[b] = info["episode_end"], info["episode_terminated"]
            success[b] = bool(info.get("success", False))
            trial_end[b] = term or trunc
            final[b] = info.get("final_observation", nxt)
            next_obs[b] = env.reset(options={"task": self._tasks[b]})[0] if trial_end[b] else nxt
        return EnvStep(next_obs, final, rewards, episode_end, terminated, trial_end, success)

    def close(self) -> None:
        for env in self.envs:
            env.close()


class SubprocessEnvs:
    """The trial envs in one subprocess each (gymnasium's AsyncVectorEnv, no autoreset), stepped
    in parallel: for machines with a core per few envs (on 2 cores it was slower even for
    MetaWorld, `benchmarks/metaworld_speed.py`). The same data as
    `InProcessEnvs` (each env is seeded alike); fewer tasks than envs pad the batch with copies of
    the last task, whose results are dropped."""

    def __init__(self, make: Callable[[], TrialEnv], n: int) -> None:
        self.vec = gym.vector.AsyncVectorEnv([make] * n, autoreset_mode=gym.vector.AutoresetMode.DISABLED)
        self.observation_space = self.vec.single_observation_space
        self.action_space = self.vec.single_action_space
        self._n = n

    def __len__(self) -> int:
        return self.vec.num_envs

    def _pad(self, rows: Sequence[Any] | np.ndarray) -> list[Any] | np.ndarray:
        missing = self.vec.num_envs - self._n
        if isinstance(rows, np.ndarray):
            return np.concatenate([rows, np.repeat(rows[-1:], missing, axis=0)])
        return list(rows) + [rows[-1]] * missing

    def reset(self, tasks: Sequence[Task], seeds: Sequence[int]) -> np.ndarray:
        self._n = len(tasks)
        self.vec.set_attr("task", self._pad(tasks))
        obs, _ = self.vec.reset(seed=[int(s) for s in self._pad(seeds)])
        return obs[: self._n]

    def step(self, actions: np.ndarray) -> EnvStep:
        nxt, rewards, terminated, truncated, info = self.vec.step(self._pad(actions))
        trial_end = terminated | truncated

        none = np.zeros(len(nxt), dtype=bool)
        inner = info.get("_final_observation", none)  # gymnasium marks the envs that reported a key
        success = info.get("_success", none) & info.get("success", none).astype(bool)
        final = np.where(inner[:, None], info["final_observation"], nxt) if inner.any() else nxt.copy()
        if trial_end.any():  # the next trial on the same task (TrialEnv keeps its task)
            restarted, _ = self.vec.reset(options={"reset_mask": trial_end})
            nxt = np.where(trial_end[:, None], restarted, nxt)
        n = self._n
        return EnvStep(nxt[:n].astype(np.float32), final[:n].astype(np.float32), rewards[:n].astype(float),
                       info["episode_end"][:n].astype(bool), info["episode_terminated"][:n].astype(bool),
                       trial_end[:n], success[:n])

    def close(self) -> None:
        self.vec.close()


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and `taskset` set)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _shard_worker(conn: Any, make: Callable[[], TrialEnv], n: int) -> None:
    """A worker process of `SplitEnvs`: its shard of trial envs, stepped on request."""
    envs = InProcessEnvs(make, n)
    while True:
        command, *args = conn.recv()
        if command == "close":
            envs.close()
            return
        try:
            conn.send(("ok", envs.reset(*args) if command == "reset" else envs.step(*args)))
        except Exception as exc:  # noqa: BLE001 (any env failure is handed to the sampler, which raises it)
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class SplitEnvs:
    """The trial envs in contiguous shards, one per core, stepped at the same time: this process
    steps the first shard while a worker process each steps the others (`_shard_worker`). The
    policy still acts on all B at once in this process, so each step crosses a pipe once per
    worker, not once per env (gymnasium's AsyncVectorEnv's cost on few cores). Each env is the
    one `InProcessEnvs` would build, so the data are the same; fewer tasks than envs fill the
    first shards."""

    def __init__(self, make: Callable[[], TrialEnv], n: int, shards: int | None = None) -> None:
        shards = max(1, min(n, usable_cores() if shards is None else shards))
        self.bounds = [n * k // shards for k in range(shards + 1)]  # shard k: envs bounds[k]..bounds[k+1]-1
        self.local = InProcessEnvs(make, self.bounds[1])
        self.observation_space, self.action_space = self.local.observation_space, self.local.action_space
        # forkserver: a worker starts from a clean process, not a fork of one running torch's threads
        context = multiprocessing.get_context("forkserver")
        self.workers = []
        for lo, hi in zip(self.bounds[1:-1], self.bounds[2:]):
            parent, child = context.Pipe()
            process = context.Process(target=_shard_worker, args=(child, make, hi - lo), daemon=True)
            process.start()
            child.close()
            self.workers.append((parent, process))
        self._active: list[tuple[int, int]] = []  # (lo, hi) of each worker shard holding tasks

    def __len__(self) -> int:
        return self.bounds[-1]

    def _ask(self, conn: Any) -> Any:
        try:
            status, payload = conn.recv()
        except EOFError:
            raise RuntimeError("an env worker process died (see its output above)") from None
        if status == "error":
            raise RuntimeError(f"an env worker failed: {payload}")
        return payload

    def reset(self, tasks: Sequence[Task], seeds: Sequence[int]) -> np.ndarray:
        n = len(tasks)
        self._active = [(lo, min(hi, n)) for lo, hi in zip(self.bounds[1:-1], self.bounds[2:]) if lo < n]
        for (conn, _), (lo, hi) in zip(self.workers, self._active):
            conn.send(("reset", tasks[lo:hi], seeds[lo:hi]))
        first = min(n, self.bounds[1])
        obs = [self.local.reset(tasks[:first], seeds[:first])] if first else []
        return np.concatenate(obs + [self._ask(conn) for (conn, _), _ in zip(self.workers, self._active)])

    def step(self, actions: np.ndarray) -> EnvStep:
        for (conn, _), (lo, hi) in zip(self.workers, self._active):  # the workers step while this process does
            conn.send(("step", actions[lo:hi]))
        parts = [self.local.step(actions[: self.bounds[1]])]
        parts += [self._ask(conn) for (conn, _), _ in zip(self.workers, self._active)]
        return EnvStep(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(EnvStep)))

    def close(self) -> None:
        self.local.close()
        for conn, process in self.workers:
            try:
                conn.send(("close",))
            except (BrokenPipeError, OSError):
                pass
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
        self.workers = []


class TrialSampler:
    """B trial envs of one task distribution, stepped in lockstep; the policy is called once per
    step on all B, and its state is carried from step to step without being looked into."""

    def __init__(
        self, distribution: TaskDistribution, n_envs: int, episodes_per_trial: int, max_episode_steps: int,
        vector_env: VectorEnvKind = "sync", min_episodes: int | None = None,
    ) -> None:
        """`min_episodes`: trials of a random number of episodes, min_episodes..episodes_per_trial
        (`TrialEnv`); a rollout stays episodes_per_trial x max_episode_steps long, and a new
        trial on the same task starts where one ends early."""
        make = functools.partial(_trial_env, distribution, episodes_per_trial, max_episode_steps, min_episodes)
        kinds: dict[str, Callable[[Callable[[], TrialEnv], int], EnvBatch]] = {
            "sync": InProcessEnvs, "async": SubprocessEnvs, "split": SplitEnvs}
        self.envs = kinds[vector_env](make, n_envs)
        self.steps_per_trial = episodes_per_trial * max_episode_steps
        self.obs_dim = self.envs.observation_space.shape[0]
        space = self.envs.action_space
        self.act_dim = space.shape[0]
        self.action_bounds = (torch.as_tensor(space.low, dtype=torch.float32),
                              torch.as_tensor(space.high, dtype=torch.float32))
        self.reports_success = distribution.reports_success

    @classmethod
    def for_training(cls, distribution: TaskDistribution, task: TaskConfig, n_envs: int) -> TrialSampler:
        """The sampler of an epoch's trials as `task` shapes them (n_envs: this process's share)."""
        return cls(distribution, n_envs, task.episodes_per_trial, task.max_episode_steps, task.vector_env,
                   task.min_episodes_per_trial)

    def close(self) -> None:
        self.envs.close()

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
        steps = self.steps_per_trial if steps is None else steps

        obs = torch.zeros(steps, n, self.obs_dim)
        next_obs = torch.zeros(steps, n, self.obs_dim)
        actions = torch.zeros(steps, n, self.act_dim)
        log_probs, values, rewards, bootstrap = (torch.zeros(steps, n) for _ in range(4))
        flags = {k: torch.zeros(steps, n, dtype=torch.bool) for k in
                 ("episode_start", "trial_start", "episode_end", "terminated", "trial_end", "success")}

        # The policy acts where its model lives (`trmrl.distributed.device`); the envs and the
        # rollout stay on the CPU: one copy of the B inputs there and of the B actions back per step.
        device = getattr(policy, "device", torch.device("cpu"))
        on_device = lambda s: Starts(s.episode.to(device), s.trial.to(device))  # noqa: E731
        # no tasks (a process whose share of a meta-test is empty): an empty rollout of the right shape
        current = self.envs.reset(tasks, env_seeds) if n else None
        starts = Starts(episode=torch.ones(n, dtype=torch.bool), trial=torch.ones(n, dtype=torch.bool))
        state = policy.initial_state(n)
        no_start = on_device(Starts(episode=torch.zeros(n, dtype=torch.bool), trial=torch.zeros(n, dtype=torch.bool)))
        for t in range(steps if n else 0):
            x = torch.from_numpy(current)
            step, state = policy.act(x.to(device), state, on_device(starts), generators, deterministic)
            step_actions = step.actions.cpu()
            if not torch.isfinite(step_actions).all():
                raise DivergenceError("the policy produced a non-finite action")
            obs[t], actions[t], log_probs[t], values[t] = x, step_actions, step.log_probs, step.values
            flags["episode_start"][t], flags["trial_start"][t] = starts.episode, starts.trial

            out = self.envs.step(step_actions.double().numpy())
            current, final, step_rewards = out.next_obs, out.final_obs, out.rewards
            rewards[t] = torch.from_numpy(step_rewards)
            next_obs[t] = torch.from_numpy(final)
            for key in ("episode_end", "terminated", "trial_end", "success"):
                flags[key][t] = torch.from_numpy(getattr(out, key))

            # Time limits are truncations: keep V(final observation) to bootstrap from. The final
            # observation continues the episode that just ended, so nothing starts there.
            truncated = flags["episode_end"][t] & ~flags["terminated"][t]
            if truncated.any():
                with torch.no_grad():
                    v_final = policy.value(torch.from_numpy(final).to(device), state, no_start).cpu()
                bootstrap[t] = torch.where(truncated, v_final, 0.0)
            starts = Starts(episode=flags["episode_end"][t].clone(), trial=flags["trial_end"][t].clone())

        # A trial still running when the rollout stops (early terminations restarted it, e.g.
        # ant-dir) is cut off by the rollout, not by the task: keep V of what comes next.
        running = ~flags["trial_end"][-1]
        cut_values = torch.zeros(n)
        if running.any():
            with torch.no_grad():
                cut_values = torch.where(running, policy.value(torch.from_numpy(current).to(device), state,
                                                               on_device(starts)).cpu(), 0.0)
        success = flags.pop("success")
        return Rollout(obs, actions, log_probs, values, rewards, bootstrap_values=bootstrap, cut_values=cut_values,
                       success=success if self.reports_success else None, next_obs=next_obs, **flags)


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
