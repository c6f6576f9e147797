"""TrMRL's update eager (the default) against `--ppo.compile`, epoch by epoch on the same tasks,
in ONE run, with the update's model FLOP/s against the machine's measured fp32 peak.

    python benchmarks/compiled_update.py                       # ml1-reach, cheetah-vel, ant-dir: about 15 minutes
    python benchmarks/compiled_update.py --presets ml1-reach --repeats 3

The two learners of a preset start from the same weights and alternate epochs, so a slower
stretch of a shared machine hits both alike; each row is the median over `--repeats` epochs
after a first one, whose extra update time is the compilation (reported apart). ml1-reach runs
`--ml1-tasks` tasks per epoch instead of its 25 (its trials are 5,000 steps), both rows alike;
the hours column scales the measured seconds per env step to the preset's paper budget
(ML1-Reach 2.25e6 steps as the paper plots it, HalfCheetahVel 2e7 and AntDir 4e7 as the
original code's commands run), so it is a projection, not a timed run.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from speed import matmul_flops, model_flops_per_window, table

from trmrl.algos.trmrl import TrMRL
from trmrl.presets import get_preset
from trmrl.seeding import Stream, numpy_rng
from trmrl.tasks import make_task_distribution

PAPER_BUDGETS = {"ml1-reach": 2_250_000, "cheetah-vel": 20_000_000, "ant-dir": 40_000_000}


def measure(preset: str, repeats: int, ml1_tasks: int, peak: float) -> list[list[object]]:
    base = get_preset(preset)
    if preset.startswith("ml1"):
        base = base.replace(task={"tasks_per_epoch": ml1_tasks})
    configs = {"eager (default)": base, "compiled (--ppo.compile)": base.replace(ppo={"compile": True})}
    distribution = make_task_distribution(base.task.name)
    learners = {name: TrMRL(config, distribution) for name, config in configs.items()}
    tasks = distribution.sample(numpy_rng(0, Stream.TRAIN_TASKS, 0), base.task.tasks_per_epoch, "train")
    records: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
    for epoch in range(repeats + 1):
        for name, learner in learners.items():
            records[name].append(learner.train_iteration(tasks, epoch))
    sampler = learners["eager (default)"].sampler
    steps = base.task.tasks_per_epoch * base.task.steps_per_trial
    # every window of the epoch through forward and backward, once per pass of each phase's
    # policy steps; the value phase is left out of the FLOPs but not of the time: a lower bound
    flops = model_flops_per_window(base, sampler.obs_dim, sampler.act_dim) * steps * base.ppo.update_epochs
    rows: list[list[object]] = []
    eager_update = None
    for name, epochs in records.items():
        sampling = statistics.median(r["time/sampling"] for r in epochs[1:])
        update = statistics.median(r["time/update"] for r in epochs[1:])
        eager_update = eager_update or update
        hours = (sampling + update) / steps * PAPER_BUDGETS[preset] / 3600
        rows.append([preset, name, f"{sampling:.2f}", f"{update:.2f}", f"{epochs[0]['time/update'] - update:.0f}",
                     f"{flops / update / peak:.3f}", f"{eager_update / update:.2f}", f"{hours:.1f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=list(PAPER_BUDGETS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--ml1-tasks", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peak = matmul_flops(1024, 1024, 1024, torch.float32)
    rows = [row for preset in args.presets for row in measure(preset, args.repeats, args.ml1_tasks, peak)]
    header = ["preset", "update", "sampling s", "update s", "compile s (first epoch)", "policy FLOP/s / fp32 peak",
              "update speed-up", "paper budget, hours (projected)"]
    table(f"TrMRL's update, eager and compiled ({args.threads} threads, fp32 peak {peak / 1e9:.0f} GFLOP/s)",
          header, rows)


if __name__ == "__main__":
    main()
