"""TrMRL's trial sampler against gymnasium's SyncVectorEnv, in ONE run, as markdown.

    python benchmarks/sampler.py                                  # cheetah-vel, ant-dir, ml1-reach: about 5 minutes
    python benchmarks/sampler.py --presets cheetah-vel --repeats 5

For each preset's B envs (its tasks per epoch) and TrMRL policy: gymnasium's SyncVectorEnv with
random actions (the floor the sampler is held to), then trmrl's sampler with each
`task.vector_env` (`sync`: one process; `split`: a shard of envs per core, stepped at the same
time), alternated `--repeats` times on the same tasks (medians), with the share of the sampling
time spent in the policy. A last table times the policy alone (one vector step's inference)
eager and under `torch.compile`, the floor of the sampler when the simulation is cheap.
Compare ratios within one run: the machine may be shared.
"""

from __future__ import annotations

import argparse
import statistics
import time

import gymnasium as gym
import numpy as np
import torch
from speed import TimedPolicy, sync_vector_env, table

from trmrl.algos import make_algorithm
from trmrl.algos.trmrl import TrMRLPolicy
from trmrl.presets import get_preset
from trmrl.sampler import TrialSampler, usable_cores
from trmrl.seeding import Stream, numpy_rng, task_streams
from trmrl.tasks import make_task_distribution

GYMNASIUM_TWINS = {"cheetah-vel": "HalfCheetah-v5", "ant-dir": "Ant-v5"}


def metaworld_sync_vector_env(name: str, n: int, steps: int) -> float:
    """Steps/s of gymnasium's SyncVectorEnv over n of the ML1 class's training goals, its reset
    timed with the steps as the sampler's is (a MetaWorld reset costs about 20 steps)."""
    from metaworld_speed import raw_env

    dist = make_task_distribution(name)
    envs = gym.vector.SyncVectorEnv([lambda i=i: raw_env(dist, i) for i in range(n)],  # type: ignore[misc]
                                    autoreset_mode=gym.vector.AutoresetMode.DISABLED)
    actions = np.random.default_rng(0).uniform(-1, 1, (steps, n, 4)).astype(np.float32)
    envs.reset(seed=0)  # builds each simulator (not timed, as the sampler's first collection)
    start = time.perf_counter()
    envs.reset(seed=0)
    for a in actions:
        envs.step(a)
    rate = steps * n / (time.perf_counter() - start)
    envs.close()
    return rate


def measure(preset: str, steps: int, repeats: int) -> tuple[list[list[object]], list[object]]:
    config = get_preset(preset)
    name, n = config.task.name, config.task.tasks_per_epoch
    dist = make_task_distribution(name, **config.task_options())
    floor = (sync_vector_env(GYMNASIUM_TWINS[preset], n, steps) if preset in GYMNASIUM_TWINS
             else metaworld_sync_vector_env(name, n, steps))
    policy: TrMRLPolicy = make_algorithm(config, dist).policy  # type: ignore[attr-defined]
    tasks = dist.sample(numpy_rng(0, Stream.TRAIN_TASKS, 0), n, "train")
    streams = task_streams(0, Stream.TRAIN_ENVS, Stream.TRAIN_ACTIONS, 0, range(n))
    samplers = {kind: TrialSampler(dist, n, config.task.episodes_per_trial, config.task.max_episode_steps, kind)
                for kind in ("sync", "split")}
    seconds: dict[str, list[float]] = {kind: [] for kind in samplers}
    policy_seconds: dict[str, list[float]] = {kind: [] for kind in samplers}
    try:
        for sampler in samplers.values():
            sampler.collect(policy, tasks, *streams, steps=2)  # builds each simulator and worker first
        for _ in range(repeats):
            for kind, sampler in samplers.items():
                timed = TimedPolicy(policy)
                start = time.perf_counter()
                sampler.collect(timed, tasks, *streams, steps=steps)  # type: ignore[arg-type]
                seconds[kind].append(time.perf_counter() - start)
                policy_seconds[kind].append(timed.seconds)
    finally:
        for sampler in samplers.values():
            sampler.close()
    rows = [[preset, n, "gymnasium SyncVectorEnv, random actions", f"{floor:.3g}", "1.00", "-", "-"]]
    base = statistics.median(seconds["sync"])
    for kind in samplers:
        total = statistics.median(seconds[kind])
        share = statistics.median(p / s for p, s in zip(policy_seconds[kind], seconds[kind]))
        rate = n * steps / total
        rows.append([preset, n, f"trmrl sampler, `--task.vector-env {kind}`", f"{rate:.3g}", f"{rate / floor:.2f}",
                     f"{share:.0%}", f"{base / total:.2f}"])

    # the policy alone: one vector step's inference on full windows, eager and compiled
    model = policy.model
    windows = torch.randn(n, config.model.window, model.obs_dim)
    lengths = torch.full((n,), config.model.window)
    compiled = torch.compile(model.forward, dynamic=False)
    with torch.no_grad():
        start = time.perf_counter()
        compiled(windows, lengths)
        compile_s = time.perf_counter() - start
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        for _ in range(5):
            for label, forward in (("eager", model.forward), ("compiled", compiled)):
                start = time.perf_counter()
                for _ in range(100):
                    forward(windows, lengths)
                times[label].append((time.perf_counter() - start) / 100)
    eager_ms, compiled_ms = (statistics.median(times[k]) * 1e3 for k in ("eager", "compiled"))
    env_ms = n / floor * 1e3
    probe = [preset, n, f"{env_ms:.2f}", f"{eager_ms:.2f}", f"{compiled_ms:.2f}", f"{compile_s:.0f}",
             f"{env_ms / (env_ms + compiled_ms):.2f}"]
    return rows, probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["cheetah-vel", "ant-dir", "ml1-reach"])
    parser.add_argument("--steps", type=int, default=200, help="vector steps per timed collection")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = [measure(preset, args.steps, args.repeats) for preset in args.presets]
    print(f"torch {torch.__version__}, {args.threads} intra-op threads, {usable_cores()} usable cores; "
          f"{args.steps} vector steps per collection, median of {args.repeats}\n")
    table("Sampling rate against gymnasium's SyncVectorEnv",
          ["preset", "B", "sampler", "env steps/s", "ratio to SyncVectorEnv", "policy share", "speed-up over sync"],
          [row for rows, _ in results for row in rows])
    table("The policy alone, one vector step",
          ["preset", "B", "SyncVectorEnv ms / vector step", "policy eager ms", "policy compiled ms", "compile s",
           "ratio bound, compiled policy and SyncVectorEnv's stepping alone"],
          [probe for _, probe in results])


if __name__ == "__main__":
    main()
