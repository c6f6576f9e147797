"""Epoch time of TrMRL with 'whole' memory (one causal pass per trial, a key/value cache while
acting) against the paper's window of 5, on the same tasks, in one run, epochs alternated.

    python benchmarks/whole_memory.py                          # cheetah-vel and ml1-reach, about 15 minutes
    python benchmarks/whole_memory.py --presets cheetah-vel --repeats 3

Each row is the median over `--repeats` epochs of one configuration; the two configurations of a
preset alternate epoch by epoch, so a slower stretch of a shared machine hits both alike. The
'whole' rows use the trial scope (memory over the whole trial, the mode's point); ml1-reach runs
`--ml1-tasks` tasks per epoch instead of its 25 (its trials are 5,000 steps), both rows alike.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from speed import table

from trmrl.algos.trmrl import TrMRL
from trmrl.config import TrainConfig
from trmrl.presets import get_preset
from trmrl.seeding import Stream, numpy_rng
from trmrl.tasks import make_task_distribution


def variants(preset: str, ml1_tasks: int) -> dict[str, TrainConfig]:
    base = get_preset(preset)
    if preset.startswith("ml1"):
        base = base.replace(task={"tasks_per_epoch": ml1_tasks})
    return {"window 5 (paper preset)": base,
            "whole trial": base.replace(model={"memory": "whole", "memory_scope": "trial"})}


def measure(preset: str, repeats: int, ml1_tasks: int) -> list[list[object]]:
    configs = variants(preset, ml1_tasks)
    distribution = make_task_distribution(get_preset(preset).task.name)
    learners = {name: TrMRL(config, distribution) for name, config in configs.items()}
    n_tasks = next(iter(configs.values())).task.tasks_per_epoch
    tasks = distribution.sample(numpy_rng(0, Stream.TRAIN_TASKS, 0), n_tasks, "train")
    times: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
    for epoch in range(repeats + 1):  # epoch 0 warms up (allocations, first-call costs) and is dropped
        for name, learner in learners.items():
            metrics = learner.train_iteration(tasks, epoch)
            if epoch:
                times[name].append(metrics)
    rows: list[list[object]] = []
    base_epoch = None
    for name, records in times.items():
        def median(key: str, records: list[dict[str, float]] = records) -> float:
            return statistics.median(r[key] for r in records)
        sampling, update = median("time/sampling"), median("time/update")
        epoch_s = sampling + update
        base_epoch = base_epoch or epoch_s
        rows.append([preset, name, f"{sampling:.2f}", f"{update:.2f}", f"{epoch_s:.2f}",
                     f"{median('charts/sampling_sps'):,.0f}", f"{epoch_s / base_epoch:.2f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["cheetah-vel", "ml1-reach"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--ml1-tasks", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [row for preset in args.presets for row in measure(preset, args.repeats, args.ml1_tasks)]
    header = ["preset", "memory", "sampling s", "update s", "epoch s", "sampler steps/s", "epoch / window 5's"]
    table("Whole-trial memory against the window of 5", header, rows)


if __name__ == "__main__":
    main()
