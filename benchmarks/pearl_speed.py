"""PEARL speed: gradient steps/s of `PEARL.gradient_step` (every network, the meta-batch of G
tasks as one tensor) on the presets' networks and batches, at 1 and 2 torch threads; and the
critic's forward + backward with the G tasks' minibatches in one tensor against a Python loop
over the tasks (what "batch the per-task minibatches" buys).

    python benchmarks/pearl_speed.py              # about 2 minutes
    python benchmarks/pearl_speed.py --steps 50   # more steps per timing
"""

from __future__ import annotations

import argparse
import time

import torch

from trmrl.algos.pearl import PEARL
from trmrl.presets import get_preset
from trmrl.tasks import make_task_distribution


def built(preset: str) -> PEARL:
    """The preset's PEARL with its replay buffers filled by the initial collection."""
    config = get_preset(preset, "pearl").replace(pearl={"n_train_tasks": 20, "initial_steps": 400})
    algo = PEARL(config, make_task_distribution(config.task.name, **config.task_options()))
    algo.collect_initial()
    return algo


def steps_per_second(algo: PEARL, steps: int) -> float:
    generator = torch.Generator().manual_seed(0)
    algo.gradient_step(generator)  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        algo.gradient_step(generator)
    return steps / (time.perf_counter() - start)


def critic_pass(algo: PEARL, rows: torch.Tensor, per_task: bool) -> None:
    """Q of (G, batch, S + A + Z) inputs, forward and backward, at once or task by task."""
    parts = rows.unbind(0) if per_task else [rows.reshape(-1, rows.shape[-1])]
    for part in parts:
        algo.qf(part).pow(2).mean().backward()


def critic_ratio(algo: PEARL, steps: int) -> tuple[float, float]:
    p = algo.config.pearl
    inputs = algo.layout.state_dim + algo.layout.act_dim + p.latent_size
    rows = torch.randn(p.meta_batch, p.batch_size, inputs)
    times = []
    for per_task in (False, True):
        critic_pass(algo, rows, per_task)
        start = time.perf_counter()
        for _ in range(steps):
            critic_pass(algo, rows, per_task)
        times.append((time.perf_counter() - start) / steps)
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--presets", nargs="+", default=["point-nav", "cheetah-vel"])
    args = parser.parse_args()
    print("## PEARL gradient steps (policy, twin Q, V, encoder; soft target update)\n")
    print("| preset | meta-batch x batch (context) | width | threads | gradient steps/s | "
          "2000 steps take (s) |")
    print("|---|---|---|---|---|---|")
    algos = {name: built(name) for name in args.presets}
    for name, algo in algos.items():
        p = algo.config.pearl
        for threads in (1, 2):
            torch.set_num_threads(threads)
            rate = steps_per_second(algo, args.steps)
            print(f"| {name} | {p.meta_batch} x {p.batch_size} ({p.context_batch}) | {p.net_size} | {threads} | "
                  f"{rate:.1f} | {2000 / rate:.0f} |")
    print("\n## The twin-Q forward + backward: the meta-batch as one tensor vs one task at a time (2 threads)\n")
    print("| preset | one tensor (ms) | loop over tasks (ms) | loop / tensor |")
    print("|---|---|---|---|")
    torch.set_num_threads(2)
    for name, algo in algos.items():
        batched, looped = critic_ratio(algo, args.steps)
        print(f"| {name} | {1e3 * batched:.1f} | {1e3 * looped:.1f} | {looped / batched:.2f} |")


if __name__ == "__main__":
    main()
