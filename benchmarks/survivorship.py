"""Which cheetah-vel runs the original code's early-stopping rules would have killed, and the
survivors' training curve against every run's.

In March 2021 the original code's `src/garage/_functions.py` (`log_performance`) raised an
exception when an epoch's `Average/AverageReturn` (the mean undiscounted return of the epoch's
training episodes, sampled actions: our `charts/episode_return`) fell below a threshold, and its
hyperparameter search (`examples/torch/hyper_search_trmrl.py`) refilled the freed slot with a new
random configuration. The rules, by commit (luckeciano/transformers-metarl):

    0cd41f32 (2021-03-05)  epoch >= 100: < -300; epoch >= 200: < -280; epoch >= 300: < -200
    47a24697 (2021-03-05)  any epoch: < -450, and the three above
    8b21ac53 (2021-03-09)  any epoch: < -450 (the three above commented out), until 35635e52
                           (2021-03-27) replaced them

    python benchmarks/survivorship.py benchmarks/results/cheetah-vel/preset-s* \\
        benchmarks/results/cheetah-vel/survivorship-s* --steps 240000 --out docs/img/cheetah-vel-survivorship.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

RULES: dict[str, list[tuple[int, float]]] = {
    "0cd41f32": [(100, -300.0), (200, -280.0), (300, -200.0)],
    "47a24697": [(0, -450.0), (100, -300.0), (200, -280.0), (300, -200.0)],
    "8b21ac53": [(0, -450.0)],
}
"""Commit -> (first epoch, threshold): the run dies at the first epoch >= first whose training
return is below the threshold."""


def training_returns(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """(env steps after each epoch, the epoch's mean training-episode return) of a run directory."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [(r["charts/env_steps"], r["charts/episode_return"]) for r in records if "charts/episode_return" in r]
    steps, returns = (np.array(x, dtype=float) for x in zip(*rows))
    return steps, returns


def killed_at(returns: np.ndarray, rules: list[tuple[int, float]]) -> int | None:
    """The epoch at which `rules` would have stopped the run (None: it survives)."""
    for epoch, value in enumerate(returns):
        if any(epoch >= first and value < threshold for first, threshold in rules):
            return epoch
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--steps", type=float, default=2.4e5, help="compare the runs up to this many env steps")
    parser.add_argument("--out", type=Path, help="draw all runs' and the survivors' mean curves here")
    args = parser.parse_args()

    curves = {}
    print(f"| run | seed | epochs | {' | '.join(f'killed by {c}' for c in RULES)} | mean return, last 10 epochs |")
    print("|---|---|---|" + "---|" * len(RULES) + "---|")
    for run in args.runs:
        steps, returns = training_returns(run)
        keep = steps <= args.steps
        steps, returns = steps[keep], returns[keep]
        seed = json.loads((run / "config.json").read_text())["seed"]
        deaths = {c: killed_at(returns, rules) for c, rules in RULES.items()}
        curves[run.name] = (steps, returns, deaths)
        cells = " | ".join("survives" if e is None else f"epoch {e} ({returns[e]:.0f})" for e in deaths.values())
        print(f"| {run.name} | {seed} | {len(returns)} | {cells} | {returns[-10:].mean():.1f} |")

    n = min(len(s) for s, _, _ in curves.values())
    steps = next(iter(curves.values()))[0][:n]
    every = np.stack([r[:n] for _, r, _ in curves.values()])
    print(f"\nall {len(every)} runs: mean of the last 10 epochs {every[:, -10:].mean():.1f}")
    for commit in RULES:
        alive = np.stack([r[:n] for _, r, d in curves.values() if d[commit] is None])
        print(f"survivors of {commit}: {len(alive)} of {len(every)}, mean of the last 10 epochs {alive[:, -10:].mean():.1f}")

    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        for _, r, d in curves.values():
            ax.plot(steps, r[:n], color="0.8" if d["8b21ac53"] is None else "tab:red", lw=0.8)
        ax.plot(steps, every.mean(0), color="k", lw=2, label=f"all {len(every)} runs (mean)")
        alive = np.stack([r[:n] for _, r, d in curves.values() if d["8b21ac53"] is None])
        ax.plot(steps, alive.mean(0), color="tab:blue", lw=2, label=f"survivors of the -450 rule ({len(alive)}, mean)")
        ax.axhline(-450, color="tab:red", ls=":", lw=1, label="-450: the rule (killed runs in red)")
        ax.set_xlabel("env steps")
        ax.set_ylabel("training return (epoch's episodes, sampled actions)")
        ax.set_title("HalfCheetahVel, paper preset: the original code's early stopping")
        ax.legend(fontsize=8)
        fig.tight_layout()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.out, dpi=120)
        print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
