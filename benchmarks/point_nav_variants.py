"""point-nav beyond the tuned toy: a grid of goal distributions (radius x arc of the goal circle),
TrMRL with its preset's window (W = 5) against W = 1, each over seeds, beside a random policy
and the goal-knowing oracle on the same held-out tasks.

    python benchmarks/point_nav_variants.py --out variants            # the grid, 3 seeds each
    python benchmarks/point_nav_variants.py --out v --seeds 1 --total-env-steps 20000   # a smoke run

Runs go to OUT/<variant>/<agent>-s<seed> (two at a time, one torch thread each; a run already
finished there is reused); the script prints a markdown table (return per episode index, mean
over seeds with a 95% bootstrap CI over seeds stratified by task, and the fraction of the
random-to-oracle gap closed) and writes OUT/variants.png.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from trmrl.stats import aggregate

VARIANTS = {  # name: (goal radius, goal arc in degrees)
    "r1-half": (1.0, 180.0),
    "r1-full": (1.0, 360.0),
    "r2-half": (2.0, 180.0),
    "r2-full": (2.0, 360.0),
}
AGENTS = {"W5": [], "W1": ["--model.window", "1"]}


def run(out: Path, variant: str, agent: str, seed: int, budget: int | None, extra: list[str]) -> Path:
    radius, arc = VARIANTS[variant]
    path = out / variant / f"{agent}-s{seed}"
    if (path / "eval" / "adaptation.json").is_file():
        return path
    command = [sys.executable, "-m", "trmrl.cli", "train", "point-nav", "--seed", str(seed), "--torch-threads", "1",
               "--task.goal-radius", str(radius), "--task.goal-arc", str(arc), "--no-progress", "--run-dir", str(path),
               *AGENTS[agent], *extra, *(["--total-env-steps", str(budget)] if budget else [])]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr}")
    return path


def load(path: Path, name: str) -> np.ndarray:
    return np.array(json.loads((path / "eval" / f"{name}.json").read_text())["returns"], dtype=float)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--total-env-steps", type=int, default=None, help="budget per run (default: the preset's)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("extra", nargs="*", help="more `trmrl train` overrides for every run, after --")
    args = parser.parse_args()
    jobs = list(itertools.product(VARIANTS, AGENTS, range(1, args.seeds + 1)))
    with ThreadPoolExecutor(args.jobs) as pool:
        paths = dict(zip(jobs, pool.map(lambda j: run(args.out, *j, args.total_env_steps, args.extra), jobs)))

    print("| variant | agent | episode 0 [95% CI] | episode 1 | last episode | gap closed (episodes 0 / last) |")
    print("|---|---|---|---|---|---|")
    curves = {}
    for variant in VARIANTS:
        first = paths[(variant, "W5", 1)]
        random, oracle = load(first, "adaptation-random"), load(first, "adaptation-oracle")  # the same tasks for all
        for agent in (*AGENTS, "random", "oracle"):
            if agent in AGENTS:
                scores = np.stack([load(paths[(variant, agent, s)], "adaptation") for s in range(1, args.seeds + 1)])
            else:
                scores = (random if agent == "random" else oracle)[None]
            stats = [aggregate(scores[:, :, k]) for k in range(scores.shape[2])]
            curves[(variant, agent)] = stats
            gap = [(s.mean - random[:, k].mean()) / (oracle[:, k].mean() - random[:, k].mean())
                   for k, s in zip((0, -1), (stats[0], stats[-1]))]
            ci = f" [{stats[0].mean_ci[0]:.2f}, {stats[0].mean_ci[1]:.2f}]" if agent in AGENTS and args.seeds > 1 else ""
            print(f"| {variant} | {agent} | {stats[0].mean:.2f}{ci} | {stats[1].mean:.2f} | {stats[-1].mean:.2f} | "
                  f"{gap[0]:.2f} / {gap[1]:.2f} |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(VARIANTS), figsize=(4 * len(VARIANTS), 3.6), sharey=False)
    for ax, variant in zip(axes, VARIANTS):
        for agent, style in (("W5", "-o"), ("W1", "-s"), ("random", "--"), ("oracle", ":")):
            stats = curves[(variant, agent)]
            x = np.arange(len(stats))
            ax.plot(x, [s.mean for s in stats], style, label=agent, color="grey" if agent in ("random", "oracle") else None)
            if agent in AGENTS and args.seeds > 1:
                ax.fill_between(x, [s.mean_ci[0] for s in stats], [s.mean_ci[1] for s in stats], alpha=0.2)
        radius, arc = VARIANTS[variant]
        ax.set_title(f"radius {radius:g}, arc {arc:g} deg")
        ax.set_xlabel("episode index within the trial")
        ax.grid(alpha=0.3)
    band = f"mean over {args.seeds} seeds, 95% CI over seeds" if args.seeds > 1 else "one seed"
    axes[0].set_ylabel(f"meta-test return ({band})")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "variants.png", dpi=110)
    print(f"\nwrote {args.out / 'variants.png'}")


if __name__ == "__main__":
    main()
