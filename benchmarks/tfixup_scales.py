"""Is T-Fixup acting? Residual-branch and update scales per layer, with and without it.

    python benchmarks/tfixup_scales.py [--preset cheetah-vel] [--seed 1] [--passes 1]

For each initialisation (`--model.tfixup` code, paper, off) on one epoch of the preset's own
rollouts (the initial policy's): at initialisation, the size of each layer's attention and
feed-forward branch relative to the residual stream it is added to; then after `passes` passes
of the preset's PPO policy steps, the relative change of each layer's weights, of the latest
memory and of the action mean, and the KL divergence between the policy before and after. T-Fixup
(Huang et al., 2020) scales the initialisation so that Adam's updates change the model's output
by O(learning rate) without LayerNorm or warm-up; without it the same steps move the policy far
further. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import copy

import torch

from trmrl.algos import make_algorithm
from trmrl.algos.trmrl import make_batch, ppo_update
from trmrl.presets import get_preset
from trmrl.seeding import Stream, numpy_rng, task_streams, torch_generator
from trmrl.tasks import make_task_distribution


def residual_ratios(model, windows: torch.Tensor, lengths: torch.Tensor) -> list[tuple[float, float]]:
    """Per layer: (|attention branch| / |x|, |feed-forward branch| / |x + attention|), RMS over the
    valid positions of the windows."""
    transformer = model.transformer
    x = model.embedding(windows) + transformer.positions[: windows.shape[1]]
    valid = (torch.arange(windows.shape[1]) < lengths[:, None])[..., None]
    rms = lambda t: float(t.masked_select(valid).pow(2).mean().sqrt())
    ratios = []
    for layer in transformer.layers:
        attended, _ = layer.self_attn(x)
        h = x + attended
        ffn = layer.linear2(torch.relu(layer.linear1(h)))
        ratios.append((rms(attended) / rms(x), rms(ffn) / rms(h)))
        x = h + ffn
    return ratios


def gaussian_kl(mean0: torch.Tensor, log_std0: torch.Tensor, mean1: torch.Tensor, log_std1: torch.Tensor) -> float:
    """Mean over windows of KL(pi_0 || pi_1), summed over action dimensions."""
    var0, var1 = (2 * log_std0).exp(), (2 * log_std1).exp()
    kl = log_std1 - log_std0 + (var0 + (mean0 - mean1).pow(2)) / (2 * var1) - 0.5
    return float(kl.sum(-1).mean())


def probe(preset: str, variant: str, seed: int, passes: int) -> dict:
    config = get_preset(preset).replace(seed=seed, model={"tfixup": variant},
                                        ppo={"update_epochs": passes})
    distribution = make_task_distribution(config.task.name)
    algorithm = make_algorithm(config, distribution)
    tasks = distribution.sample(numpy_rng(seed, Stream.TRAIN_TASKS, 0), config.task.tasks_per_epoch, "train")
    rollout = algorithm.sampler.collect(algorithm.policy, tasks, *task_streams(
        seed, Stream.TRAIN_ENVS, Stream.TRAIN_ACTIONS, 0, range(len(tasks))))
    batch = make_batch(rollout, config.ppo, algorithm.policy)
    model = algorithm.model
    before = copy.deepcopy(model)
    with torch.no_grad():
        ratios = residual_ratios(model, batch.windows, batch.lengths)
        out0, memory0 = model(batch.windows, batch.lengths), model.latest_memory(batch.windows, batch.lengths)
    ppo_update(model, algorithm.optimizers.policy, algorithm.optimizers.value, batch, config.ppo,
               torch_generator(seed, Stream.MINIBATCHES, 0), algorithm.schedules, 0)
    with torch.no_grad():
        out1, memory1 = model(batch.windows, batch.lengths), model.latest_memory(batch.windows, batch.lengths)
        relative = lambda a, b: float((a - b).norm() / b.norm())
        weight_change = [relative(layer.linear1.weight, old.linear1.weight)
                         for layer, old in zip(model.transformer.layers, before.transformer.layers)]
        attn_change = [
            relative(layer.self_attn.in_proj.weight, old.self_attn.in_proj.weight)
            for layer, old in zip(model.transformer.layers, before.transformer.layers)
        ]
    return {
        "ratios": ratios,
        "weight_change": weight_change,
        "attn_change": attn_change,
        "memory_change": relative(memory1, memory0),
        "mean_change": float((out1.mean - out0.mean).abs().mean()),
        "kl": gaussian_kl(out0.mean, out0.log_std, out1.mean, out1.log_std),
        "memory_rms": float(memory0.pow(2).mean().sqrt()),
        "action_rms": float(out0.mean.pow(2).mean().sqrt()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cheetah-vel")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--passes", type=int, default=1)
    ns = parser.parse_args()
    results = {v: probe(ns.preset, v, ns.seed, ns.passes) for v in ("code", "paper", "off")}
    n_layers = len(results["code"]["ratios"])
    print(f"{ns.preset}, seed {ns.seed}: one epoch of the initial policy's rollouts, "
          f"{ns.passes} pass(es) of PPO policy steps\n")
    print("At initialisation, branch RMS / residual-stream RMS per layer (attention; feed-forward):\n")
    print("| layer | " + " | ".join(f"tfixup={v}" for v in results) + " |")
    print("|---|" + "---|" * len(results))
    for i in range(n_layers):
        print(f"| {i} | " + " | ".join(f"{r['ratios'][i][0]:.3f}; {r['ratios'][i][1]:.3f}" for r in results.values()) + " |")
    print("\nAfter the update:\n")
    print("| quantity | " + " | ".join(f"tfixup={v}" for v in results) + " |")
    print("|---|" + "---|" * len(results))
    rows = [
        ("latest memory RMS at init", "memory_rms", "{:.3f}"),
        ("action mean RMS at init", "action_rms", "{:.3f}"),
        ("relative change of the latest memory", "memory_change", "{:.3f}"),
        ("mean absolute change of the action mean", "mean_change", "{:.4f}"),
        ("KL(before || after), mean over windows", "kl", "{:.4f}"),
    ]
    for label, key, fmt in rows:
        print(f"| {label} | " + " | ".join(fmt.format(r[key]) for r in results.values()) + " |")
    for i in range(n_layers):
        print(f"| layer {i}: relative change of Q,K,V; of W1 | "
              + " | ".join(f"{r['attn_change'][i]:.4f}; {r['weight_change'][i]:.4f}" for r in results.values()) + " |")


if __name__ == "__main__":
    main()
