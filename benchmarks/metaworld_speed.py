"""MetaWorld speed in ONE run, as markdown: the bare simulator, gymnasium's in-process and
subprocess vector envs, trmrl's trial sampler, and one epoch of the ML1 presets.

    python benchmarks/metaworld_speed.py [--tasks reach-v3 push-v3] [--epoch] > table.md

Compare ratios within the table (the machine may be shared). Needs the `metaworld` extra.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch
from speed import table  # benchmarks/speed.py: the same markdown tables

from trmrl.algos import make_algorithm
from trmrl.algos.trmrl import TrMRLPolicy
from trmrl.presets import get_preset
from trmrl.sampler import TrialSampler
from trmrl.seeding import Stream, numpy_rng, task_streams
from trmrl.tasks import make_task_distribution
from trmrl.tasks.metaworld import MetaWorldBenchmark

STEPS = 400  # per env; below metaworld's 500-step limit, so no env needs a reset


def raw_env(dist: MetaWorldBenchmark, index: int) -> gym.Env:
    """The env of train task `index`: metaworld's simulator behind trmrl's thin task-env wrapper."""
    env = dist.make_env()
    env.set_task(dist.tasks("train")[index])
    return env


def bare(dist: MetaWorldBenchmark) -> float:
    env = raw_env(dist, 0)
    env.reset()
    actions = np.random.default_rng(0).uniform(-1, 1, (STEPS, 4))
    start = time.perf_counter()
    for a in actions:
        env.step(a)
    return STEPS / (time.perf_counter() - start)


def vector(dist: MetaWorldBenchmark, n: int, kind: str) -> float:
    """Steps/s of gymnasium's Sync- or AsyncVectorEnv (one process per env) over n tasks."""
    fns = [lambda i=i: raw_env(dist, i) for i in range(n)]
    cls = gym.vector.SyncVectorEnv if kind == "sync" else gym.vector.AsyncVectorEnv
    envs = cls(fns, autoreset_mode=gym.vector.AutoresetMode.DISABLED)
    envs.reset()
    actions = np.random.default_rng(0).uniform(-1, 1, (STEPS, n, 4)).astype(np.float32)
    start = time.perf_counter()
    for a in actions:
        envs.step(a)
    rate = STEPS * n / (time.perf_counter() - start)
    envs.close()
    return rate


def sampler_rate(name: str, n: int, vector_env: str = "sync") -> tuple[float, float]:
    """trmrl's trial sampler with the ML1 preset's TrMRL policy: (steps/s, policy share)."""
    config = get_preset("ml1-reach").replace(task={"name": name})
    dist = make_task_distribution(name, **config.task_options())
    sampler = TrialSampler(dist, n, 1, STEPS, vector_env)  # type: ignore[arg-type]
    algorithm = make_algorithm(config, dist)
    policy: TrMRLPolicy = algorithm.policy  # type: ignore[attr-defined]
    tasks = dist.sample(numpy_rng(0, Stream.TRAIN_TASKS, 0), n, "train")
    streams = task_streams(0, Stream.TRAIN_ENVS, Stream.TRAIN_ACTIONS, 0, range(n))
    sampler.collect(policy, tasks, *streams, steps=2)  # builds each env's simulator first (not timed)
    start = time.perf_counter()
    sampler.collect(policy, tasks, *streams)
    total = time.perf_counter() - start
    inputs = torch.zeros(n, sampler.obs_dim)
    state = policy.initial_state(n)
    from trmrl.protocols import Starts

    starts = Starts(torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool))
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(50):
            _, state = policy.act(inputs, state, starts, streams[1])
    policy_per_step = (time.perf_counter() - start) / 50
    sampler.close()
    return STEPS * n / total, policy_per_step * STEPS / total


def one_epoch(preset: str) -> dict[str, float]:
    config = get_preset(preset)
    dist = make_task_distribution(config.task.name, **config.task_options())
    algorithm = make_algorithm(config, dist)
    tasks = dist.sample(numpy_rng(config.seed, Stream.TRAIN_TASKS, 0), config.task.tasks_per_epoch, "train")
    return algorithm.train_iteration(tasks, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["reach-v3", "push-v3"])
    parser.add_argument("--envs", type=int, default=25, help="B: the ML1 presets' tasks per epoch")
    parser.add_argument("--epoch", action="store_true", help="also time one epoch of each ML1 preset (minutes)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; B = {args.envs}, {STEPS} steps per env")
    rows = []
    for task in args.tasks:
        dist = make_task_distribution(f"ml1/{task}", seed=1)
        floor = bare(dist)
        sync, async_ = vector(dist, args.envs, "sync"), vector(dist, args.envs, "async")
        ours, policy_share = sampler_rate(f"ml1/{task}", args.envs)
        ours_async, _ = sampler_rate(f"ml1/{task}", args.envs, "async")
        rows.append([task, floor, sync, async_, async_ / sync, ours, ours_async, ours_async / ours, ours / floor,
                     f"{policy_share:.0%}"])
    table("Simulation and sampling, random actions (trmrl: the ml1 preset's TrMRL policy)",
          ["task", "bare env steps/s", "SyncVectorEnv steps/s", "AsyncVectorEnv steps/s", "async / sync",
           "trmrl sampler steps/s", "trmrl sampler, --task.vector-env async", "async / sync",
           "trmrl sync / bare", "policy share of trmrl sync sampling"], rows)
    if args.epoch:
        rows = []
        for task in args.tasks:
            m = one_epoch(f"ml1-{task.removesuffix('-v3')}")
            rows.append([task, m["time/sampling"], m["time/update"], 125_000 / (m["time/sampling"] + m["time/update"]),
                         2.2e6 / 125_000 * (m["time/sampling"] + m["time/update"]) / 3600])
        table("One epoch of the ML1 preset (25 tasks x 10 episodes x 500 steps; PPO minibatch 32)",
              ["task", "sampling s", "update s", "env steps/s", "2.2e6 steps, hours"], rows)


if __name__ == "__main__":
    main()
