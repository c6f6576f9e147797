"""Where one cheetah-vel epoch's time goes: torch.profiler over one epoch of sampling and
update, operators sorted by their own CPU time, as a markdown table.

    python benchmarks/profile_epoch.py [--update-epochs N]
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from trmrl.algos.trmrl import TrMRL, make_batch, ppo_update
from trmrl.presets import get_preset
from trmrl.seeding import Stream, numpy_rng, task_streams
from trmrl.tasks import make_task_distribution


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--update-epochs", type=int, default=2, help="PPO passes profiled (paper: 10)")
    parser.add_argument("--rows", type=int, default=15)
    args = parser.parse_args()
    config = get_preset("cheetah-vel")
    config = dataclasses.replace(config, ppo=dataclasses.replace(config.ppo, update_epochs=args.update_epochs))
    distribution = make_task_distribution(config.task.name)
    learner = TrMRL(config, distribution)
    sampler = learner.sampler
    tasks = distribution.sample(numpy_rng(0, Stream.TRAIN_TASKS, 0), config.task.tasks_per_epoch, "train")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function("sampling"):
            streams = task_streams(0, Stream.TRAIN_ENVS, Stream.TRAIN_ACTIONS, 0, range(len(tasks)))
            rollout = sampler.collect(learner.policy, tasks, *streams)
        with record_function("update"):
            batch = make_batch(rollout, config.ppo, learner.policy)
            ppo_update(learner.model, learner.optimizers.policy, learner.optimizers.value, batch, config.ppo,
                       torch.Generator().manual_seed(0), learner.schedules, first_step=0)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    phases = {e.key: e.cpu_time_total for e in events if e.key in ("sampling", "update")}
    print(f"profiled: sampling {phases.get('sampling', 0) / 1e6:.2f} s, update ({args.update_epochs} + "
          f"{args.update_epochs} passes) {phases.get('update', 0) / 1e6:.2f} s (profiler overhead included)\n")
    print("| operator | calls | self CPU s | share |")
    print("|---|---|---|---|")
    for e in [e for e in events if e.key not in phases][: args.rows]:
        print(f"| `{e.key}` | {e.count} | {e.self_cpu_time_total / 1e6:.3f} | {e.self_cpu_time_total / total:.1%} |")


if __name__ == "__main__":
    main()
