"""Where one PPO policy step of TrMRL's update goes, against its arithmetic, in ONE run.

    python benchmarks/update_floor.py                       # ml1-reach and cheetah-vel minibatches, about 3 minutes
    python benchmarks/update_floor.py --compiled            # and a torch.compile'd forward + backward (adds compile time)

For each preset's minibatch (ML1: 32 windows through d_model 32; cheetah-vel: 256 windows through
d_model 128) on random windows: the median wall time of the forward pass and loss, the backward
pass, gradient clipping and the AdamW step; the step's model FLOPs (forward + backward, every
position of every layer) and the FLOP/s they make against the machine's measured fp32 matmul peak.
With `--compiled`, the same step as `--ppo.compile` runs it: forward, backward, clipping and AdamW
as one graph (`trmrl.ppo.CompiledStep`). The machine may be
shared: compare within one table.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from speed import matmul_flops, model_flops_per_window, table

from trmrl import ppo
from trmrl.algos.common import TwoPhaseOptimizers
from trmrl.nets.policy import ActorCritic, PolicyOutput
from trmrl.presets import get_preset
from trmrl.tasks import make_task_distribution
from trmrl.trial import augmented_dim


def timed_steps(step: Callable[[torch.Tensor], list[float]], batches: list[torch.Tensor]) -> list[float]:
    """Median seconds of each part of `step` over the batches (the first 5 warm up)."""
    parts = [step(index) for index in batches]
    return [statistics.median(p[i] for p in parts[5:]) for i in range(len(parts[0]))]


def measure(preset: str, steps: int, compiled: bool) -> list[list[object]]:
    config = get_preset(preset)
    env = make_task_distribution(config.task.name).make_env()
    obs_dim = augmented_dim(env.observation_space.shape[0], env.action_space.shape[0])
    act_dim = env.action_space.shape[0]
    model = ActorCritic(obs_dim, act_dim, config.model, torch.Generator().manual_seed(0))
    optimizer = TwoPhaseOptimizers.create(model, config.ppo).policy
    params = list(model.policy_parameters())
    g = torch.Generator().manual_seed(1)
    n, w, mb = 4096, config.model.window, config.ppo.minibatch_size
    windows, actions = torch.randn(n, w, obs_dim, generator=g), torch.randn(n, act_dim, generator=g)
    lengths = torch.randint(1, w + 1, (n,), generator=g)
    old_log_probs, advantages = torch.randn(n, generator=g), torch.randn(n, generator=g)
    batches = [torch.randint(0, n, (mb,), generator=g) for _ in range(steps + 5)]

    def loss_of(out: PolicyOutput, index: torch.Tensor) -> torch.Tensor:
        adv = advantages[index]
        adv = (adv - adv.mean()) / (adv.std() + 1e-8) if config.ppo.norm_adv else adv
        return ppo.clipped_surrogate(out.log_prob(actions[index]), old_log_probs[index], adv, config.ppo.clip_coef) \
            - config.ppo.ent_coef * out.entropy()

    def finish(start: float, grads_done: float) -> list[float]:
        if config.ppo.max_grad_norm is not None:  # as trmrl.optim.gradient_step
            torch.nn.utils.clip_grad_norm_(params, config.ppo.max_grad_norm)
        clipped = time.perf_counter()
        optimizer.step()
        return [grads_done - start, clipped - grads_done, time.perf_counter() - clipped]

    def eager(index: torch.Tensor) -> list[float]:
        start = time.perf_counter()
        loss = loss_of(model(windows[index], lengths[index]), index)
        forward = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        backward = time.perf_counter()
        return [forward - start, backward - forward, *finish(start, backward)[1:]]

    flops = model_flops_per_window(config, obs_dim, act_dim) * mb
    peak = matmul_flops(1024, 1024, 1024, torch.float32)
    rows = []
    forward, backward, clip, adam = timed_steps(eager, batches)
    total = forward + backward + clip + adam
    rows.append([preset, "eager (today)", f"{forward * 1e3:.2f}", f"{backward * 1e3:.2f}", f"{clip * 1e3:.2f}",
                 f"{adam * 1e3:.2f}", f"{total * 1e3:.2f}", f"{flops / 1e6:.1f}", f"{flops / total / peak:.3f}", "1.00"])
    if compiled:
        def objective(windows_: torch.Tensor, lengths_: torch.Tensor, index: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
            return loss_of(model(windows_, lengths_), index), torch.zeros(())

        step = ppo.CompiledStep(model, optimizer, objective, config.ppo.max_grad_norm)  # as --ppo.compile

        def compiled_step(index: torch.Tensor) -> list[float]:
            start = time.perf_counter()
            step(config.ppo.policy_lr, windows[index], lengths[index], index)
            return [time.perf_counter() - start]

        start = time.perf_counter()
        compiled_step(batches[0])
        compile_s = time.perf_counter() - start
        (step_s,) = timed_steps(compiled_step, batches)
        rows.append([preset, f"compiled step, AdamW included ({compile_s:.0f} s to compile)", "", "", "", "",
                     f"{step_s * 1e3:.2f}", f"{flops / 1e6:.1f}", f"{flops / step_s / peak:.3f}", f"{total / step_s:.2f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["ml1-reach", "cheetah-vel"])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compiled", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    header = ["preset", "step", "forward + loss ms", "backward ms", "clip ms", "AdamW ms", "step ms", "model MFLOP",
              "fraction of fp32 peak", "speed-up"]
    rows = [row for preset in args.presets for row in measure(preset, args.steps, args.compiled)]
    table("One PPO policy step against its arithmetic", header, rows)


if __name__ == "__main__":
    main()
