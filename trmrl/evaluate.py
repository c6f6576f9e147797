"""Meta-evaluation shared by every meta-learner, on tasks from a held-out seed stream.

The contract follows garage's meta-evaluator: explore a task, adapt, evaluate. A learner that
adapts in memory (TrMRL, RL^2) does all three inside one trial, so episode k of a trial shows
the return after k episodes of experience on the task. A learner that adapts by gradient steps
(MAML) or by posterior updates (PEARL) is run episode by episode: after episode k it adapts on
what it saw, and episode k + 1 uses the adapted policy.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from trmrl import distributed
from trmrl.config import TrainConfig
from trmrl.errors import ConfigError
from trmrl.protocols import ExploresFirst, InMemoryLearner, MetaLearner, Policy, Starts, Step
from trmrl.rundir import write_text
from trmrl.sampler import TrialSampler, VectorEnvKind, episode_returns, episode_successes, first_episode_rewards
from trmrl.seeding import Stream, numpy_rng, random_rows, task_streams
from trmrl.stats import aggregate
from trmrl.tasks import HasOracle, Task, TaskDistribution, TaskList, make_task_distribution, registered, registration


@dataclass(frozen=True)
class EvalProtocol:
    """Which tasks (distribution, seed streams) and how many episodes per trial."""

    name: str
    n_tasks: int
    episodes: int
    deterministic: bool = True
    distribution: str | None = None
    """Task distribution; None: the run's own."""
    task_stream: Stream = Stream.TEST_TASKS
    env_stream: Stream = Stream.TEST_ENVS
    action_stream: Stream = Stream.TEST_ACTIONS
    adaptation_episodes: int = 0
    """The first episodes of a trial are adaptation; the rest are the evaluation episodes whose
    success and return the protocol reports (0: every episode is reported alike). A learner that
    adapts in memory acts in them as in any episode; one that explores first (MAML's gradient step,
    PEARL's posterior) explores in all of them and adapts after the last, as garage's
    MetaEvaluator (n_exploration_eps) gives both."""
    every_test_task: bool = False
    """Run every task of the held-out list once (MetaWorld: every test class and goal) instead
    of n_tasks drawn ones."""
    trials_per_task: int = 1
    """Separate trials per task, each from an empty memory; a result row holds a task's trials
    one after the other (n_tasks, trials_per_task * episodes)."""


MAX_ENVS = 50
"""Envs stepped at once; a protocol over more tasks runs them in batches of this many (the data
of a task depend on its own streams alone, so batching does not change them)."""


PROTOCOLS: dict[str, EvalProtocol] = {
    # paper: every 5 epochs, 30 fresh tasks x 2 episodes, mean actions (its own stream; the same tasks
    # at every meta-test unless eval.same_tasks is off, then fresh per epoch)
    "during-training": EvalProtocol("during-training", 30, 2, task_stream=Stream.EVAL_TASKS,
                                    env_stream=Stream.EVAL_ENVS, action_stream=Stream.EVAL_ACTIONS),
    # paper Fig. 5: 20 held-out tasks, one trial of 6 episodes
    "adaptation": EvalProtocol("adaptation", 20, 6),
    # paper Fig. 6: HalfCheetahVel with target velocity U[3, 4], 20 tasks x 6 episodes
    "ood": EvalProtocol("ood", 20, 6),
    # metaworld.evaluation.metalearning_evaluation's shape, counted per env and episode: every
    # test class and goal, 10 adaptation episodes, then 3 evaluation episodes in the same trial
    # (memory carried as the agent's scope allows)
    "metaworld": EvalProtocol("metaworld", 0, 13, adaptation_episodes=10, every_test_task=True),
    # the paper's MetaWorld measurement, the author's MetaEvaluator (examples/torch/
    # transformer_ppo_ml1.py, src/garage/experiment/meta_evaluator.py after f7fb254b): 10 held-out
    # tasks, 10 one-episode trials each (its RL2Worker empties the memory at every episode, so the
    # 10 exploration episodes before them change nothing and are not run), sampled actions, an
    # episode succeeds if any of its steps does
    "paper-metaworld": EvalProtocol("paper-metaworld", 10, 1, deterministic=False, trials_per_task=10),
    # garage's MetaEvaluator's exploration budget (src/garage/experiment/meta_evaluator.py:
    # n_exploration_eps=10 episodes, adapt, then the adapted policy's n_test_episodes, 1 by default,
    # 10 in its cheetah-dir MAML example): 20 held-out tasks, 10 adaptation episodes, then 3
    # evaluation episodes (metaworld's count) in the same trial, mean actions as the other
    # protocols (garage's MAML samples); the in-memory learners get the same 10 episodes of
    # experience first
    "meta-evaluator": EvalProtocol("meta-evaluator", 20, 13, adaptation_episodes=10),
}


def resolve_protocol(name: str, task: str, **changes: Any) -> EvalProtocol:
    """The named protocol for a run on `task`, with optional changes (n_tasks, episodes, ...)."""
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown protocol '{name}'; choose from {', '.join(PROTOCOLS)}")
    protocol = PROTOCOLS[name]
    if name == "ood":
        pairs = {n: r.ood for n, r in registered().items() if r.ood}
        if task not in pairs:
            raise ConfigError(f"protocol 'ood' is defined for {', '.join(pairs)} only, not '{task}'")
        protocol = dataclasses.replace(protocol, distribution=pairs[task])
    if protocol.every_test_task and changes.get("n_tasks") is not None:
        raise ConfigError(f"protocol '{name}' runs every held-out task once; a task count does not apply")
    protocol = dataclasses.replace(protocol, **{k: v for k, v in changes.items() if v is not None})
    if protocol.trials_per_task < 1:
        raise ConfigError(f"protocol '{name}' needs at least one trial per task")
    if not 0 <= protocol.adaptation_episodes < protocol.episodes:
        raise ConfigError(f"protocol '{name}' needs more episodes ({protocol.episodes}) than adaptation episodes "
                          f"({protocol.adaptation_episodes})")
    return protocol


def during_training(n_tasks: int, episodes: int, deterministic: bool) -> EvalProtocol:
    return resolve_protocol("during-training", "", n_tasks=n_tasks, episodes=episodes, deterministic=deterministic)


@dataclass
class MetaTestResult:
    """Per task and episode index of a trial; `first_episode_rewards` is the per-step reward of
    each task's first episode (the online-adaptation view)."""

    protocol: EvalProtocol
    tasks: Sequence[Task]
    returns: np.ndarray  # (n_tasks, trials_per_task * episodes)
    successes: np.ndarray | None  # (n_tasks, trials_per_task * episodes) in {0, 1}, for tasks that report success
    first_episode_rewards: np.ndarray  # (n_tasks, H)

    def per_episode(self) -> list[dict[str, float]]:
        """Aggregates over tasks for each episode index: mean, IQM, 95% bootstrap CIs."""
        rows = []
        for k in range(self.returns.shape[1]):
            row = {"episode": k, **{f"return_{n}": v for n, v in aggregate(self.returns[:, k, None]).to_dict().items()}}
            if self.successes is not None:
                row |= _success(self.successes[:, k])
            rows.append(row)
        return rows

    def evaluation_episodes(self) -> np.ndarray:
        """Columns of the evaluation episodes: those after the adaptation ones in every trial."""
        p = self.protocol
        return np.flatnonzero(np.arange(self.returns.shape[1]) % p.episodes >= p.adaptation_episodes)

    def summary(self, tasks: Sequence[int] | None = None) -> dict[str, Any]:
        """Over the evaluation episodes (after the protocol's adaptation episodes) of `tasks`
        (default all): the mean return and success rate per episode index and over all of them,
        with 95% bootstrap CIs over tasks (each task's episodes averaged first)."""
        rows = slice(None) if tasks is None else list(tasks)
        returns = self.returns[rows][:, self.evaluation_episodes()]
        out: dict[str, Any] = {"n_tasks": len(returns),
                               **{f"return_{n}": v for n, v in aggregate(np.nanmean(returns, axis=1)).to_dict().items()}}
        if self.successes is not None:
            successes = self.successes[rows][:, self.evaluation_episodes()]
            out |= _success(np.nanmean(successes, axis=1))
            out["success_rate_per_episode"] = np.nanmean(successes, axis=0).tolist()
        return out

    def per_class(self) -> dict[str, dict[str, Any]]:
        """`summary` for each task name (MetaWorld: each held-out class)."""
        names = [t.name for t in self.tasks]
        return {name: self.summary([i for i, n in enumerate(names) if n == name]) for name in dict.fromkeys(names)}

    def metrics(self, prefix: str = "meta_test") -> dict[str, float]:
        """`meta_test/episode_k/return` (and `/success`): means over tasks."""
        out = {f"{prefix}/episode_{k}/return": float(m) for k, m in enumerate(np.nanmean(self.returns, axis=0))}
        if self.successes is not None:
            out |= {f"{prefix}/episode_{k}/success": float(m) for k, m in enumerate(np.nanmean(self.successes, axis=0))}
        return out

    def summary_metrics(self, prefix: str) -> dict[str, float]:
        """`<prefix>/return` (and `/success`): means over tasks of the evaluation episodes."""
        summary = self.summary()
        out = {f"{prefix}/return": float(summary["return_mean"])}
        if "success_rate" in summary:
            out[f"{prefix}/success"] = float(summary["success_rate"])
        return out

    def to_dict(self) -> dict[str, Any]:
        p = self.protocol
        return {
            "protocol": p.name, "n_tasks": len(self.tasks), "episodes": p.episodes, "deterministic": p.deterministic,
            "distribution": p.distribution,
            "tasks": [{"name": t.name, "params": list(t.params)} for t in self.tasks],
            "adaptation_episodes": p.adaptation_episodes, "trials_per_task": p.trials_per_task,
            "intervals": f"95% percentile bootstrap over the {len(self.tasks)} tasks (2000 resamples)",
            "per_episode": self.per_episode(),
            "evaluation": self.summary(),
            "per_class": self.per_class(),
            "returns": self.returns.tolist(),
            "successes": None if self.successes is None else self.successes.tolist(),
            "first_episode_rewards": self.first_episode_rewards.tolist(),
        }

    def write(self, directory: Path, name: str | None = None) -> tuple[Path, Path]:
        """<name>.json (everything) and <name>.csv (one row per task and episode)."""
        directory.mkdir(parents=True, exist_ok=True)
        name = name or self.protocol.name
        json_path, csv_path = directory / f"{name}.json", directory / f"{name}.csv"
        write_text(json_path, json.dumps(_finite(self.to_dict()), indent=1) + "\n")
        table = io.StringIO(newline="")
        writer = csv.writer(table)
        writer.writerow(["task", "task_name", "task_params", "episode", "return", "success"])
        for i, task in enumerate(self.tasks):
            for k in range(self.returns.shape[1]):
                success = "" if self.successes is None else self.successes[i, k]
                writer.writerow([i, task.name, " ".join(f"{x:g}" for x in task.params), k, self.returns[i, k], success])
        write_text(csv_path, table.getvalue())
        return json_path, csv_path


def _success(successes: np.ndarray) -> dict[str, float]:
    """Success rate over tasks (NaN: episode not reached) with its 95% bootstrap CI."""
    stats = aggregate(successes[:, None])
    return {"success_rate": stats.mean, "success_ci_low": stats.mean_ci[0], "success_ci_high": stats.mean_ci[1]}


def _finite(value: Any) -> Any:
    """JSON has no NaN: write null instead."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


class MetaTester:
    """Runs one protocol on the distribution's test split, tasks drawn from the protocol's own
    seed stream (so a distribution with no held-out set still gives tasks training never drew);
    reuses its envs across calls."""

    def __init__(
        self,
        distribution: TaskDistribution,
        protocol: EvalProtocol,
        max_episode_steps: int,
        seed: int,
        vector_env: VectorEnvKind = "sync",
    ) -> None:
        self.distribution = make_task_distribution(protocol.distribution) if protocol.distribution else distribution
        self.protocol = protocol
        self.seed = seed
        self.max_episode_steps = max_episode_steps
        if protocol.every_test_task:
            if not isinstance(self.distribution, TaskList):
                raise ConfigError(f"protocol '{protocol.name}' needs a held-out task list; "
                                  f"{self.distribution.name} has none")
            self.protocol = protocol = dataclasses.replace(protocol, n_tasks=len(self.tasks()))
        # trials stepped together; over several processes each steps its share of them
        self.batch = min(protocol.n_tasks * protocol.trials_per_task, MAX_ENVS)
        self.sampler = TrialSampler(self.distribution, distributed.share_size(self.batch), protocol.episodes,
                                    max_episode_steps, vector_env)
        self._single = TrialSampler(self.distribution, 1, 1, max_episode_steps)

    def close(self) -> None:
        self.sampler.close()
        self._single.close()

    def tasks(self, index: int = 0) -> Sequence[Task]:
        """The protocol's tasks for evaluation number `index` (every held-out task, or n_tasks
        drawn from the protocol's stream)."""
        p = self.protocol
        if p.every_test_task:
            assert isinstance(self.distribution, TaskList)
            return self.distribution.tasks("test")
        return self.distribution.sample(numpy_rng(self.seed, p.task_stream, index), p.n_tasks, "test")

    def streams(self, index: int, tasks: Sequence[int]) -> tuple[list[int], list[torch.Generator]]:
        """Reset seeds and action generators of the protocol's tasks `tasks` in evaluation `index`."""
        p = self.protocol
        return task_streams(self.seed, p.env_stream, p.action_stream, index, tasks)

    def run(self, learner: MetaLearner | Policy[Any], index: int = 0, tasks: Sequence[Task] | None = None
            ) -> MetaTestResult:
        """Meta-test on the protocol's tasks for evaluation number `index` (fresh tasks per index),
        or on `tasks` (then n_tasks of them, with the protocol's streams)."""
        if not isinstance(learner, MetaLearner):  # a bare policy adapts in its memory, if at all
            learner = InMemoryLearner(learner)
        p = self.protocol
        if p.adaptation_episodes and isinstance(learner, ExploresFirst):  # its budget: every adaptation episode
            learner = learner.with_exploration_episodes(p.adaptation_episodes)
        tasks = self.tasks(index) if tasks is None else list(tasks)
        trials = [task for task in tasks for _ in range(p.trials_per_task)]  # a task's trials side by side
        seeds, generators = self.streams(index, range(len(trials)))
        if learner.adapts_in_memory:  # type: ignore[union-attr]
            parts = []
            for start in range(0, len(trials), self.batch):
                batch = slice(start, start + self.batch)
                rollout = distributed.collect(self.sampler, learner.exploration_policy(), trials[batch],  # type: ignore[union-attr]
                                              seeds[batch], generators[batch], p.deterministic)
                parts.append((episode_returns(rollout, p.episodes), episode_successes(rollout, p.episodes),
                              first_episode_rewards(rollout, self.max_episode_steps)))
            returns, successes, first = (np.concatenate(arrays) for arrays in zip(*parts))
        else:
            returns, successes, first = self._run_episodewise(learner, trials, seeds, generators)  # type: ignore[arg-type]
        # (trials, episodes) -> (tasks, trials_per_task * episodes); the first trial's rewards
        returns, successes = (a.reshape(len(tasks), -1) for a in (returns, successes))
        first = first[:: p.trials_per_task]
        return MetaTestResult(p, tasks, returns, successes if self.distribution.reports_success else None, first)

    def oracle(self, index: int = 0) -> MetaTestResult | None:
        """A goal-knowing agent on the protocol's tasks for evaluation `index`, where the
        distribution defines one (`oracle_returns`, e.g. point-nav's greedy mover): the top of the
        scale an adapting agent can reach."""
        if not isinstance(self.distribution, HasOracle):
            return None
        p, tasks = self.protocol, self.tasks(index)
        returns = self.distribution.oracle_returns(tasks, p.trials_per_task * p.episodes, self.max_episode_steps)  # type: ignore[attr-defined]
        return MetaTestResult(p, tasks, returns, None, np.full((len(tasks), self.max_episode_steps), np.nan))

    def run_with_bounds(
        self, learner: MetaLearner | Policy[Any], out_dir: Path, name: str | None = None
    ) -> tuple[MetaTestResult, MetaTestResult, MetaTestResult | None]:
        """The learner, a random policy and (where the distribution has one) the oracle on the same
        tasks, written to out_dir/<name>.{json,csv}, <name>-random.{json,csv} and
        <name>-oracle.{json,csv} (name: the protocol's): every curve with both ends of its scale."""
        name = name or self.protocol.name
        space = self.sampler.envs.action_space
        result, random, oracle = self.run(learner), self.run(RandomPolicy(space.low, space.high)), self.oracle()
        if distributed.is_main():
            result.write(out_dir, name)
            random.write(out_dir, f"{name}-random")
            if oracle is not None:
                oracle.write(out_dir, f"{name}-oracle")
        return result, random, oracle

    def same_as(self, saved: dict[str, Any]) -> bool:
        """Whether a saved result (`MetaTestResult.to_dict`) ran this protocol: the same tasks,
        episodes and action mode."""
        p = self.protocol
        tasks = [{"name": t.name, "params": list(t.params)} for t in self.tasks()]
        return ((saved.get("episodes"), saved.get("deterministic"), saved.get("trials_per_task", 1), saved.get("tasks"))
                == (p.episodes, p.deterministic, p.trials_per_task, tasks))

    def _run_episodewise(
        self, learner: MetaLearner, tasks: Sequence[Task], seeds: Sequence[int], generators: Sequence[torch.Generator]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p = self.protocol
        returns = np.full((len(tasks), p.episodes), np.nan)
        successes = np.full_like(returns, np.nan)
        first = np.full((len(tasks), self.max_episode_steps), np.nan)
        for i, (task, seed, generator) in enumerate(zip(tasks, seeds, generators)):
            policy = learner.exploration_policy()
            for k in range(p.episodes):
                rollout = self._single.collect(policy, [task], [seed + k], [generator], p.deterministic,
                                               steps=self.max_episode_steps)
                returns[i, k] = episode_returns(rollout, 1)[0, 0]
                successes[i, k] = episode_successes(rollout, 1)[0, 0]
                if k == 0:
                    first[i] = first_episode_rewards(rollout, self.max_episode_steps)[0]
                policy = learner.adapt(policy, rollout)
        return returns, successes, first


def gap_closed(result: np.ndarray, random: np.ndarray, oracle: np.ndarray) -> np.ndarray:
    """Per episode index, the fraction of the random-to-oracle gap an agent closes: mean returns
    (n_tasks, episodes) each -> (episodes,); 0 = random, 1 = oracle."""
    floor = np.nanmean(random, axis=0)
    return (np.nanmean(result, axis=0) - floor) / (np.nanmean(oracle, axis=0) - floor)


class RandomPolicy:
    """Uniform actions in [low, high]: the floor every meta-learner must beat. Stateless."""

    def __init__(self, low: np.ndarray, high: np.ndarray) -> None:
        self.low = torch.as_tensor(low, dtype=torch.float32)
        self.high = torch.as_tensor(high, dtype=torch.float32)

    def initial_state(self, n: int) -> None:
        return None

    def act(
        self, inputs: Tensor, state: None, starts: Starts, generators: Sequence[torch.Generator] | None,
        deterministic: bool = False,
    ) -> tuple[Step, None]:
        assert generators is not None, "the random policy needs one generator per env"
        u = random_rows(generators, self.low.shape, torch.rand)
        zeros = torch.zeros(len(inputs))
        return Step(self.low + u * (self.high - self.low), zeros, zeros), None

    def value(self, inputs: Tensor, state: None, starts: Starts) -> Tensor:
        return torch.zeros(len(inputs))


def final_protocols(task: str, distribution: TaskDistribution | None = None, also: Sequence[str] = (),
                    explores_first: bool = False) -> list[str]:
    """What runs after training: the fast-adaptation protocol; the out-of-distribution one for a
    task that has an OOD pair (cheetah-vel: the paper's Fig. 5 and 6); MetaWorld's protocol over
    every held-out task for a distribution that lists them (where a learner that explores first
    explores for its 10 adaptation episodes); elsewhere, for a learner that explores before it
    adapts (MAML, PEARL), its reference evaluator's budget ('meta-evaluator') beside the
    fast-adaptation protocol's one episode; then the run's `eval.also`."""
    listed = isinstance(distribution, TaskList)  # metaworld's protocol already explores for 10 there
    ours = (["adaptation"] + (["ood"] if registration(task).ood else []) + (["metaworld"] if listed else [])
            + (["meta-evaluator"] if explores_first and not listed else []))
    return ours + [name for name in also if name not in ours]


def final_meta_test(config: TrainConfig, learner: MetaLearner, distribution: TaskDistribution,
                    eval_dir: Path) -> dict[str, Any]:
    """`final_protocols`, each beside a random policy (and the distribution's oracle, if any) on
    the same tasks, written to eval_dir/<protocol>.{json,csv}, <protocol>-random.{json,csv} (and
    <protocol>-oracle); adaptation and OOD with the run's final-test size. Returns the adaptation
    summary, the others nested under their protocol's name."""
    e = config.eval
    summaries = {}
    for name in final_protocols(config.task.name, distribution, e.also, isinstance(learner, ExploresFirst)):
        if name == "meta-evaluator" and name not in e.also:  # the fast-adaptation protocol's tasks, its own episodes
            changes = {"deterministic": e.deterministic, "n_tasks": e.final_n_tasks}
        elif name in e.also:  # as the protocol defines it (its action mode, trials, episodes), on more tasks
            changes = {} if PROTOCOLS[name].every_test_task else {"n_tasks": max(e.final_n_tasks, PROTOCOLS[name].n_tasks)}
        else:
            changes = {"deterministic": e.deterministic}
            if not PROTOCOLS[name].every_test_task:
                changes |= {"n_tasks": e.final_n_tasks, "episodes": e.final_episodes}
        protocol = resolve_protocol(name, config.task.name, **changes)
        tester = MetaTester(distribution, protocol, config.task.max_episode_steps, e.seed, config.task.vector_env)
        result, random, oracle = tester.run_with_bounds(learner, eval_dir)
        tester.close()
        p = tester.protocol
        summaries[name] = {
            "protocol": name, "distribution": tester.distribution.name,
            "n_tasks": p.n_tasks, "episodes": p.episodes, "adaptation_episodes": p.adaptation_episodes,
            "trials_per_task": p.trials_per_task, "deterministic": p.deterministic,
            "return_per_episode": np.nanmean(result.returns, axis=0).tolist(),
            "random_return_per_episode": np.nanmean(random.returns, axis=0).tolist(),
        }
        if p.adaptation_episodes:  # what the protocol reports: its evaluation episodes
            summaries[name] |= {"evaluation": result.summary(), "random_evaluation": random.summary()}
        if oracle is not None:
            summaries[name] |= {"oracle_return_per_episode": np.nanmean(oracle.returns, axis=0).tolist(),
                                "gap_closed_per_episode": gap_closed(result.returns, random.returns,
                                                                     oracle.returns).tolist()}
        if result.successes is not None:
            summaries[name] |= {
                "success_per_episode": np.nanmean(result.successes, axis=0).tolist(),
                "random_success_per_episode": np.nanmean(random.successes, axis=0).tolist(),
                "evaluation": result.summary(), "per_class": result.per_class()}
    adaptation = summaries.pop("adaptation")
    return adaptation | summaries
