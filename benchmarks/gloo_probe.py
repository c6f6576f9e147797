"""Probe: the PPO policy update on two single-thread processes that average gradients over
torch.distributed (gloo), against one process on two threads. Same model, same minibatch of
256 windows per step (each process takes half), so only the time differs.

    python benchmarks/gloo_probe.py [--steps 64]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trmrl.nets.policy import ActorCritic
from trmrl.presets import get_preset


def policy_steps(rank: int, world: int, steps: int, threads: int, out: dict) -> None:
    torch.set_num_threads(threads)
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    model = ActorCritic(28, 6, get_preset("cheetah-vel").model, torch.Generator().manual_seed(0))
    params = list(model.policy_parameters())
    optimizer = torch.optim.AdamW(params, lr=3e-5, weight_decay=0.01, fused=True)
    generator = torch.Generator().manual_seed(rank)
    windows, actions = torch.randn(256 // world, 5, 28, generator=generator), torch.randn(256 // world, 6, generator=generator)
    lengths = torch.full((256 // world,), 5)
    start = 0.0
    for step in range(steps + 5):
        if step == 5:
            start = time.perf_counter()
        loss = -model(windows, lengths).log_prob(actions).mean()
        optimizer.zero_grad()
        loss.backward()
        if world > 1:
            flat = torch.cat([p.grad.reshape(-1) for p in params])
            dist.all_reduce(flat)
            flat /= world
            offset = 0
            for p in params:
                p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
        optimizer.step()
    if rank == 0:
        out["ms_per_step"] = 1e3 * (time.perf_counter() - start) / steps
    if world > 1:
        dist.destroy_process_group()


def run_world(world: int, steps: int) -> float:
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(policy_steps, args=(world, steps, 1, out), nprocs=world, join=True)
        return out["ms_per_step"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=64)
    args = parser.parse_args()
    one: dict = {}
    policy_steps(0, 1, args.steps, 2, one)
    two = run_world(2, args.steps)
    print("| setup | ms per policy minibatch step (256 windows) |")
    print("|---|---|")
    print(f"| 1 process, 2 threads | {one['ms_per_step']:.1f} |")
    print(f"| 2 processes x 1 thread, gloo all-reduce | {two:.1f} |")


if __name__ == "__main__":
    main()
