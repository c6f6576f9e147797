"""Scaling over processes: `trmrl train PRESET` as 1 process x 2 threads against
`--nproc 2` (2 processes x 1 thread, gloo) on this machine, epoch by epoch, with the time the
processes spend in collectives; the cost of one gradient all-reduce alone; and a projection of
an epoch and of the preset's budget over N machines, derived from those parts.

    python benchmarks/scaling.py [--presets cheetah-vel ant-dir ml1-reach] [--epochs 3]
    python benchmarks/scaling.py --latency      # one collective's latency floor, seconds to run

Each preset trains `--epochs` epochs per setup (the first is left out of the medians: start-up
costs) with no meta-test; `--tasks-per-epoch K` overrides the preset's epoch (MetaWorld's 25 x
10 x 500 steps would take minutes per epoch here). Prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trmrl.log import read_metrics
from trmrl.presets import get_preset

SETUPS = (("1 process x 2 threads", 1, 2), ("2 processes x 1 thread", 2, 1))


def train_epochs(preset: str, epochs: int, nproc: int, threads: int, tasks_per_epoch: int | None) -> list[dict]:
    """The training records of `epochs` epochs of `trmrl train preset` (no meta-test)."""
    config = get_preset(preset)
    tasks = tasks_per_epoch or config.task.tasks_per_epoch
    steps = epochs * tasks * config.task.steps_per_trial
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        args = [sys.executable, "-m", "trmrl", "train", preset, "--total-env-steps", str(steps), "--run-dir", str(run),
                "--eval.every-epochs", "0", "--eval.no-final", "--no-progress", "--torch-threads", str(threads),
                "--task.tasks-per-epoch", str(tasks), "--nproc", str(nproc)]
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL, env=os.environ | {"OMP_NUM_THREADS": str(threads)})
        return [r for r in read_metrics(run) if "time/sampling" in r]


def medians(records: list[dict]) -> dict[str, float]:
    steady = records[1:] or records
    m = lambda key: statistics.median(r.get(key, 0.0) for r in steady)  # noqa: E731
    steps = statistics.median(r["charts/sampling_sps"] * r["time/sampling"] for r in steady)
    out = {"sampling": m("time/sampling"), "update": m("time/update"), "comm_sampling": m("time/communication_sampling"),
           "comm_update": m("time/communication_update"), "steps": steps}
    out["epoch"] = out["sampling"] + out["update"]
    out["sps"] = steps / out["epoch"]
    return out


def _allreduce_worker(rank: int, numel: int, repeats: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    flat = torch.randn(numel)
    for _ in range(10):
        dist.all_reduce(flat)
    dist.barrier()
    start = time.perf_counter()
    for _ in range(repeats):
        dist.all_reduce(flat)
    if rank == 0:
        out["ms"] = 1e3 * (time.perf_counter() - start) / repeats
    dist.destroy_process_group()


def allreduce_ms(numel: int, repeats: int = 200) -> float:
    """Milliseconds of one update step's all-reduce alone (the flat buffer of `numel` floats:
    gradients, a flag per parameter, the loss), 2 processes on this machine's loopback."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.start_processes(_allreduce_worker, args=(numel, repeats, port, out), nprocs=2, start_method="spawn")
        return out["ms"]


def model_size(preset: str) -> tuple[int, int]:
    """(policy, value) all-reduce buffer of a step of each phase of the preset's model: the
    parameters, a flag per parameter tensor, the loss and two statistics."""
    from trmrl.algos import make_algorithm
    from trmrl.tasks import make_task_distribution

    config = get_preset(preset)
    config = config.replace(task={"tasks_per_epoch": 2})
    algorithm = make_algorithm(config, make_task_distribution(config.task.name, **config.task_options()))
    model = algorithm.model  # type: ignore[attr-defined]
    phases = (list(model.policy_parameters()), list(model.value_parameters()))
    return tuple(sum(p.numel() for p in params) + len(params) + 3 for params in phases)  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["cheetah-vel", "ant-dir"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--tasks-per-epoch", type=int, nargs="*", default=None,
                        help="one per preset (0: the preset's own)")
    parser.add_argument("--latency", action="store_true",
                        help="time only an all-reduce of 3 floats: the latency floor of one collective")
    args = parser.parse_args()
    if args.latency:
        print(f"one all-reduce of 3 floats, 2 processes over loopback: {allreduce_ms(3):.3f} ms")
        return
    overrides = args.tasks_per_epoch or [0] * len(args.presets)

    rows, parts = [], {}
    for preset, tasks in zip(args.presets, overrides):
        config = get_preset(preset)
        per_phase = config.ppo.update_epochs * -(-((tasks or config.task.tasks_per_epoch) * config.task.steps_per_trial)
                                                   // config.ppo.minibatch_size)
        for name, nproc, threads in SETUPS:
            m = medians(train_epochs(preset, args.epochs, nproc, threads, tasks or None))
            rows.append((preset, name, m))
            parts[(preset, nproc)] = m
        policy, value = model_size(preset)
        parts[(preset, "allreduce")] = {"policy": allreduce_ms(policy), "value": allreduce_ms(value), "steps": per_phase,
                                        "params": (policy, value)}

    print("| preset | setup | env steps / epoch | sampling s | update s | of which in collectives s "
          "(sampling + update) | epoch s | env steps/s | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|")
    for preset, name, m in rows:
        base = parts[(preset, 1)]["sps"]
        comm = f"{m['comm_sampling']:.2f} + {m['comm_update']:.2f}" if name.startswith("2") else "-"
        print(f"| {preset} | {name} | {m['steps']:,.0f} | {m['sampling']:.2f} | {m['update']:.2f} | {comm} | "
              f"{m['epoch']:.2f} | {m['sps']:,.0f} | {m['sps'] / base:.2f}x |")

    print("\n| preset | all-reduce buffer, floats (policy, value) | gradient steps per phase and epoch | one step's all-reduce "
          "alone, ms (policy, value) | all of an epoch's, s |")
    print("|---|---|---|---|---|")
    for preset in args.presets:
        a = parts[(preset, "allreduce")]
        total = a["steps"] * (a["policy"] + a["value"]) / 1e3
        print(f"| {preset} | {a['params'][0]:,}, {a['params'][1]:,} | {a['steps']:,} | {a['policy']:.3f}, "
              f"{a['value']:.3f} | {total:.2f} |")

    print("\nProjection: an epoch over N machines, each one process of 2 threads; sampling and update split "
          "N ways from the 1-process run, plus the update's collectives alone (loopback; a network adds "
          "latency per step)")
    print("\n| preset | N | sampling s | update s | collectives s | epoch s | budget, hours |")
    print("|---|---|---|---|---|---|---|")
    for preset in args.presets:
        one, a = parts[(preset, 1)], parts[(preset, "allreduce")]
        per_epoch = a["steps"] * (a["policy"] + a["value"]) / 1e3
        epochs = get_preset(preset).total_env_steps / one["steps"]
        for n in (1, 2, 4, 8, 16):
            comm = per_epoch if n > 1 else 0.0
            epoch = one["sampling"] / n + one["update"] / n + comm
            print(f"| {preset} | {n} | {one['sampling'] / n:.2f} | {one['update'] / n:.2f} | {comm:.2f} | {epoch:.2f} | "
                  f"{epochs * epoch / 3600:.1f} |")
    print(json.dumps({f"{k[0]}/{k[1]}": v for k, v in parts.items()}, default=str), file=sys.stderr)


if __name__ == "__main__":
    main()
