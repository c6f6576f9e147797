"""MAML-TRPO speed: (1) the inner step and the TRPO step's Fisher-vector products with a Python
loop over tasks (what `trmrl.algos.maml.adapt` does) against `torch.func.vmap` of
`torch.func.grad` over tasks, on the cheetah-vel preset's shapes; (2) one preset epoch of
`trmrl train cheetah-vel --algo maml` (40 tasks x 20 episodes x 200 steps, before and after
adaptation), sampling and update timed apart.

    python benchmarks/maml_speed.py            # both, about 3 minutes
    python benchmarks/maml_speed.py --no-epoch # (1) only
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.func import grad, vmap

from trmrl.algos.maml import MAML, GaussianMLP, Params, TaskBatch, adapt, group_forward, inner_loss, meta_params
from trmrl.nets.policy import gaussian_kl
from trmrl.presets import get_preset
from trmrl.seeding import Stream, numpy_rng
from trmrl.tasks import make_task_distribution
from trmrl.trpo import conjugate_gradient


def adapt_vmapped(net: GaussianMLP, params: Params, batch: TaskBatch, lr: float) -> Params:
    """`adapt` with one vmapped gradient over the tasks instead of a loop (second order)."""
    shared = {k: v[0] for k, v in params.items()}

    def one(s, a, adv):
        g = grad(lambda p: inner_loss(net, p, s, a, adv))(shared)
        return {k: shared[k] - lr * g[k] for k in shared}

    return vmap(one)(batch.states, batch.actions, batch.advantages)


def fvp_seconds(net: GaussianMLP, batch: TaskBatch, post: TaskBatch, adapt_fn, iters: int) -> tuple[float, torch.Tensor]:
    """Seconds for the KL's gradient graph and `iters` Fisher-vector products through the inner step."""
    params = list(net.parameters())
    with torch.no_grad():
        old = group_forward(net, adapt(net, meta_params(net), batch, 0.1, create_graph=False), post.states)
    t0 = time.perf_counter()
    adapted = adapt_fn(net, meta_params(net), batch, 0.1)
    mean, log_std = group_forward(net, adapted, post.states)
    kl = gaussian_kl(*old, mean, log_std).mean()
    kl_grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(kl, params, create_graph=True)])

    def fvp(v):
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(kl_grad @ v, params, retain_graph=True)]) + 1e-5 * v

    direction = conjugate_gradient(fvp, torch.ones_like(kl_grad), iters)
    return time.perf_counter() - t0, direction


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-epoch", action="store_true")
    args = parser.parse_args()
    config = get_preset("cheetah-vel", "maml")
    m, t = config.maml, config.task
    net = GaussianMLP(20, 6, m, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    n = m.rollouts_per_task * t.max_episode_steps

    def batch() -> TaskBatch:
        return TaskBatch(torch.randn(t.tasks_per_epoch, n, 20, generator=g), torch.randn(t.tasks_per_epoch, n, 6, generator=g),
                         torch.randn(t.tasks_per_epoch, n, generator=g), torch.randn(t.tasks_per_epoch, n, generator=g))

    pre, post = batch(), batch()
    loop = lambda net, p, b, lr: adapt(net, p, b, lr, create_graph=True)
    print(f"## MAML inner step and Fisher-vector products: {t.tasks_per_epoch} tasks x {n} samples, "
          f"MLP {m.hidden_sizes}, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| path | inner step s | KL graph + 10 CG iterations s | ratio to loop |")
    print("|---|---|---|---|")
    results = {}
    for name, fn in (("loop over tasks (trmrl)", loop), ("torch.func.vmap of grad", adapt_vmapped)):
        t0 = time.perf_counter()
        adapted = fn(net, meta_params(net), pre, 0.1)
        inner = time.perf_counter() - t0
        seconds, direction = fvp_seconds(net, pre, post, fn, m.cg_iters)
        results[name] = (inner, seconds, adapted, direction)
    base = results["loop over tasks (trmrl)"][1]
    for name, (inner, seconds, _, _) in results.items():
        print(f"| {name} | {inner:.2f} | {seconds:.2f} | {seconds / base:.2f} |")
    (_, _, a1, d1), (_, _, a2, d2) = results.values()
    same = all(torch.allclose(a1[k], a2[k], atol=1e-5) for k in a1) and torch.allclose(d1, d2, rtol=1e-3, atol=1e-4)
    print(f"\nsame adapted parameters and CG direction: {same}")

    if not args.no_epoch:
        distribution = make_task_distribution(config.task.name, **config.task_options())
        algo = MAML(config, distribution)  # builds the 800 envs before the clock starts
        print(f"\n## One epoch of `trmrl train cheetah-vel --algo maml` ({config.steps_per_epoch:,} env steps)\n")
        print("| epoch | sampling s | update s | env steps/s | step accepted |")
        print("|---|---|---|---|---|")
        for epoch in range(2):
            tasks = distribution.sample(numpy_rng(config.seed, Stream.TRAIN_TASKS, epoch), t.tasks_per_epoch, "train")
            metrics = algo.train_iteration(tasks, epoch)
            total = metrics["time/sampling"] + metrics["time/update"]
            print(f"| {epoch} | {metrics['time/sampling']:.1f} | {metrics['time/update']:.1f} | "
                  f"{config.steps_per_epoch / total:,.0f} | {metrics['charts/step_accepted']:.0f} |")


if __name__ == "__main__":
    main()
