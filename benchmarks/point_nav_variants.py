"""point-nav beyond the tuned toy: a grid of goal distributions (radius x arc of the goal circle),
TrMRL with its preset's window (W = 5) against W = 1 and, with --agents, a window spanning the
whole trial (W = 40 = 2 episodes x 20 steps), each over seeds, beside a random policy and the
goal-knowing oracle on the same held-out tasks.

    python benchmarks/point_nav_variants.py --out variants                      # W5 and W1, 3 seeds
    python benchmarks/point_nav_variants.py --out variants --agents W5 W1 W40   # and the trial span
    python benchmarks/point_nav_variants.py --out v --seeds 1 --total-env-steps 20000   # a smoke run

Runs go to OUT/<variant>/<agent>-s<seed> through `trmrl sweep`'s runner (two at a time, one torch
thread each; a run finished there is reused, an interrupted one resumed); anything after `--` is
passed to every `trmrl train`. (A grid without this table's random/oracle columns is one
`trmrl sweep point-nav --grid task.goal-radius=1,2 --grid task.goal-arc=180,360 --grid
model.window=1,5` away.) The script prints
a markdown table (mean return per episode index of the final meta-test, 50 held-out tasks x 4
episodes; the mean over episodes with a 95% CI from a bootstrap over seeds within each task, and each seed's mean; the
fraction of the random-to-oracle gap closed; the probability that a W5 run beats a W1 / random
run on a task, with its CI; seconds per epoch) and writes OUT/variants.png.
"""

from __future__ import annotations

import argparse
import itertools
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from trmrl.stats import aggregate, probability_of_improvement
from trmrl.sweep import Cell, Job, run_job

VARIANTS = {  # name: (goal radius, goal arc in degrees)
    "r1-half": (1.0, 180.0),
    "r1-full": (1.0, 360.0),
    "r2-half": (2.0, 180.0),
    "r2-full": (2.0, 360.0),
}
AGENTS = {"W5": (), **{f"W{w}": (("model.window", str(w)),) for w in (1, 10, 20, 40)}}


def run(out: Path, variant: str, agent: str, seed: int, budget: int | None, extra: list[str]) -> Path:
    """One run of `trmrl sweep`'s runner (finished: reused; interrupted: resumed) in
    OUT/<variant>/<agent>-s<seed>."""
    radius, arc = VARIANTS[variant]
    cell = Cell((("task.goal_radius", f"{radius:g}"), ("task.goal_arc", f"{arc:g}"), *AGENTS[agent]))
    job = Job(cell, seed, out / variant / f"{agent}-s{seed}")
    if not job.finished():
        _, code, error = run_job(job, "point-nav", [*extra, *(["--total-env-steps", str(budget)] if budget else [])], 1)
        if code:
            raise SystemExit(f"{job.name} ({variant}) failed: {error}")
    return job.run_dir


def load(path: Path, name: str) -> np.ndarray:
    """(tasks, episodes) returns of a final meta-test result."""
    return np.array(json.loads((path / "eval" / f"{name}.json").read_text())["returns"], dtype=float)


def seconds_per_epoch(path: Path) -> float:
    """Median seconds of sampling + update per training epoch of a run (NaN for a stored record
    without its metrics)."""
    if not (path / "metrics.jsonl").is_file():
        return float("nan")
    records = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    return float(np.median([r["time/sampling"] + r["time/update"] for r in records if "time/update" in r]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--agents", nargs="+", choices=list(AGENTS), default=["W5", "W1"])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--total-env-steps", type=int, default=None, help="budget per run (default: the preset's)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("extra", nargs="*", help="more `trmrl train` overrides for every run, after --")
    args = parser.parse_args()
    seeds = range(1, args.seeds + 1)
    variants = {name: VARIANTS[name] for name in args.variants}
    jobs = list(itertools.product(variants, args.agents, seeds))
    with ThreadPoolExecutor(args.jobs) as pool:
        paths = dict(zip(jobs, pool.map(lambda j: run(args.out, *j, args.total_env_steps, args.extra), jobs)))

    ci_label = "95% CI: bootstrap over seeds within each task" if args.seeds > 1 else "one seed, no CI"
    print(f"| variant | agent | return per episode index | mean over episodes [{ci_label}] | per seed | gap closed "
          "| P(W5 beats it) [95% CI] | s / epoch |")
    print("|---|---|---|---|---|---|---|---|")
    curves = {}
    for variant in variants:
        first = paths[(variant, args.agents[0], 1)]
        bounds = {"random": load(first, "adaptation-random")[None], "oracle": load(first, "adaptation-oracle")[None]}
        scores = {agent: np.stack([load(paths[(variant, agent, s)], "adaptation") for s in seeds])
                  for agent in args.agents} | bounds  # (runs, tasks, episodes): the same tasks for all
        floor, top = bounds["random"].mean(), bounds["oracle"].mean()
        for agent, score in scores.items():
            stats = [aggregate(score[:, :, k]) for k in range(score.shape[2])]
            curves[(variant, agent)] = stats
            overall = aggregate(score.mean(axis=2))
            ci = f" [{overall.mean_ci[0]:.2f}, {overall.mean_ci[1]:.2f}]" if agent in args.agents and args.seeds > 1 else ""
            gap = (overall.mean - floor) / (top - floor)
            improvement, timing = "", ""
            per_seed = " / ".join(f"{m:.1f}" for m in score.mean(axis=(1, 2))) if agent in args.agents else ""
            if agent != "W5" and "W5" in scores:
                p, (low, high) = probability_of_improvement(scores["W5"].mean(axis=2), score.mean(axis=2))
                improvement = f"{p:.2f} [{low:.2f}, {high:.2f}]"
            if agent in args.agents:
                seconds = np.mean([seconds_per_epoch(paths[(variant, agent, s)]) for s in seeds])
                timing = "" if np.isnan(seconds) else f"{seconds:.2f}"
            print(f"| {variant} | {agent} | {' / '.join(f'{s.mean:.2f}' for s in stats)} | {overall.mean:.2f}{ci} "
                  f"| {per_seed} | {gap:.2f} | {improvement} | {timing} |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(variants), figsize=(4 * len(variants), 3.6), sharey=False, squeeze=False)
    axes = axes[0]
    for ax, variant in zip(axes, variants):
        for agent in (*args.agents, "random", "oracle"):
            stats = curves[(variant, agent)]
            x = np.arange(len(stats))
            bound = agent in ("random", "oracle")
            ax.plot(x, [s.mean for s in stats], "--" if agent == "random" else ":" if agent == "oracle" else "-o",
                    label=agent, color="grey" if bound else None)
            if not bound and args.seeds > 1:
                ax.fill_between(x, [s.mean_ci[0] for s in stats], [s.mean_ci[1] for s in stats], alpha=0.2)
        radius, arc = variants[variant]
        ax.set_title(f"radius {radius:g}, arc {arc:g} deg")
        ax.set_xlabel("episode index within the trial")
        ax.set_xticks(x)
        ax.grid(alpha=0.3)
    band = f"mean over {args.seeds} seeds, band: {ci_label}" if args.seeds > 1 else "one seed"
    axes[0].set_ylabel("meta-test return")
    fig.suptitle(f"point-nav goal variants, final meta-test (50 held-out tasks): {band}", fontsize=9)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "variants.png", dpi=110)
    print(f"\nwrote {args.out / 'variants.png'}")


if __name__ == "__main__":
    main()
