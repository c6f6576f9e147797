"""A trained agent from Python: load a run, make its task env, act across a trial (the agent keeps
its own memory), and meta-test it on tasks of your choosing.

    from trmrl import Agent

    agent = Agent.load("runs/point-nav-s1-20261203-071500")
    task = agent.held_out_tasks(1)[0]
    env = agent.make_env(task)                   # one trial: the run's episodes on this task
    obs, _ = env.reset(seed=0)
    agent.reset()                                # a new trial: the memory starts empty
    done = False
    while not done:
        obs, reward, terminated, truncated, info = env.step(agent.act(obs))
        done = terminated or truncated
    result = agent.evaluate(agent.held_out_tasks(5), episodes=4)   # a MetaTestResult
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trmrl.config import TrainConfig
from trmrl.errors import ConfigError
from trmrl.evaluate import PROTOCOLS, MetaTester, MetaTestResult, resolve_protocol
from trmrl.protocols import MetaLearner, Starts
from trmrl.seeding import Stream, numpy_rng
from trmrl.tasks import Task, TaskDistribution, make_task_distribution
from trmrl.trial import TrialEnv


class Agent:
    """A run's trained agent and its task distribution."""

    def __init__(self, config: TrainConfig, learner: MetaLearner, distribution: TaskDistribution) -> None:
        self.config = config
        self.learner = learner
        self.distribution = distribution
        self._policy = learner.exploration_policy()
        self._state: Any = None
        self._new_trial = True
        self._generator = torch.Generator().manual_seed(0)

    @classmethod
    def load(cls, path: str | Path) -> Agent:
        """The agent of a run directory (its checkpoint) or of a checkpoint file."""
        from trmrl.train import load_trained

        config, algorithm, _ = load_trained(Path(path))
        distribution = make_task_distribution(config.task.name, **config.task_options())
        return cls(config, algorithm.meta_learner(), distribution)

    def held_out_tasks(self, n: int, seed: int = 0) -> list[Task]:
        """n tasks of the distribution's test split, drawn from a stream training never used."""
        return list(self.distribution.sample(numpy_rng(seed, Stream.TEST_TASKS, 0), n, "test"))

    def make_env(self, task: Task, episodes: int | None = None) -> TrialEnv:
        """A gymnasium env whose episode is one trial on `task`: `episodes` episodes (the run's
        by default) of the run's length, its observations the agent's inputs."""
        t = self.config.task
        return TrialEnv(self.distribution.make_env(), episodes or t.episodes_per_trial, t.max_episode_steps, task)

    def reset(self, seed: int = 0) -> None:
        """Start a trial: the memory is emptied at the next `act`; `seed` seeds sampled actions."""
        if not self.learner.adapts_in_memory:
            raise ConfigError(f"a '{self.config.algo}' agent adapts between episodes, not step by step in memory; "
                              f"meta-test it with Agent.evaluate")
        self._new_trial = True
        self._state = self._policy.initial_state(1)
        self._generator = torch.Generator().manual_seed(seed)

    def act(self, observation: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """The action (A,) for one input of the trial env (O,): the policy mean, or a sample."""
        if self._state is None and self._new_trial:
            self.reset()
        obs = torch.as_tensor(np.asarray(observation, dtype=np.float32))[None]
        # a new episode of the trial is marked by the input's boundary flag d_{t-1} (its last entry)
        episode = torch.tensor([self._new_trial or bool(obs[0, -1] == 1.0)])
        starts = Starts(episode=episode, trial=torch.tensor([self._new_trial]))
        with torch.no_grad():
            step, self._state = self._policy.act(obs, self._state, starts, None if deterministic else [self._generator],
                                                 deterministic)
        self._new_trial = False
        return step.actions[0].cpu().numpy()

    def evaluate(self, tasks: Sequence[Task] | None = None, episodes: int | None = None, protocol: str = "adaptation",
                 deterministic: bool | None = None, seed: int = 0) -> MetaTestResult:
        """Meta-test on `tasks` (default: the protocol's own held-out tasks) in trials of `episodes`
        (default: the protocol's), as `trmrl eval` does; returns, successes and CIs per episode."""
        if protocol not in PROTOCOLS:
            raise ConfigError(f"unknown protocol '{protocol}'; choose from {', '.join(PROTOCOLS)}")
        chosen = resolve_protocol(protocol, self.config.task.name, episodes=episodes, deterministic=deterministic,
                                  n_tasks=len(tasks) if tasks is not None and not PROTOCOLS[protocol].every_test_task
                                  else None)
        if tasks is not None and chosen.every_test_task:
            chosen = dataclasses.replace(chosen, every_test_task=False, n_tasks=len(tasks))
        tester = MetaTester(self.distribution, chosen, self.config.task.max_episode_steps, seed)
        try:
            return tester.run(self.learner, tasks=tasks)
        finally:
            tester.close()
