"""What a cheetah-vel agent does: the velocity it runs at for each target velocity.

    python benchmarks/cheetah_vel_tracking.py RUN_DIR [RUN_DIR ...] [--out DIR]

For target velocities 0, 0.25, ..., 3 (and 3.25 ... 4 out of distribution), deterministic
episodes of 200 steps from REPEATS reset states per target: the mean velocity over the last 150
steps (after the start-up transient) and the episode return, averaged over the reset states. An agent that tracks the target runs on the diagonal; one
stuck in the stand-still optimum runs at 0 whatever the target, which scores about -200 v*
per episode. An episode that ends with the cheetah on its back is marked. Prints a markdown
table and writes tracking.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from trmrl.sampler import TrialSampler
from trmrl.tasks import Task, make_task_distribution
from trmrl.train import load_trained

TARGETS = np.round(np.arange(0.0, 4.01, 0.25), 2)
SKIP = 50
"""Steps of the start-up transient left out of the mean velocity."""
TORSO_X = 17
"""Index of the torso's x position in the HalfCheetah observation (qpos[1:] 8, qvel 9, xyz 3)."""
PITCH = 1
"""Index of the torso's pitch angle (qpos[2], rooty): beyond +-pi/2 the cheetah is on its back."""
DT = 0.05
REPEATS = 3


def track(run_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per target in TARGETS, over REPEATS reset states: mean velocity, mean return, and how many
    episodes ended with the cheetah on its back."""
    config, algorithm, _ = load_trained(run_dir)
    if config.task.name not in ("cheetah-vel", "cheetah-vel-ood"):
        raise SystemExit(f"{run_dir} is a {config.task.name} run, not cheetah-vel")
    tasks = [Task("velocity", (float(v),)) for v in TARGETS for _ in range(REPEATS)]
    learner = algorithm.meta_learner()
    sampler = TrialSampler(make_task_distribution(config.task.name), len(tasks), 1, config.task.max_episode_steps)
    rollout = sampler.collect(learner.exploration_policy(), tasks, list(range(len(tasks))), None, deterministic=True)
    x = rollout.obs[:, :, TORSO_X]  # position before each step
    velocity = ((x[-1] - x[SKIP]) / ((len(x) - 1 - SKIP) * DT)).numpy().reshape(-1, REPEATS)
    returns = rollout.rewards.sum(0).numpy().reshape(-1, REPEATS)
    flipped = (rollout.obs[-1, :, PITCH].abs() > np.pi / 2).numpy().reshape(-1, REPEATS)
    return velocity.mean(1), returns.mean(1), flipped.sum(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, default=Path("plots"))
    ns = parser.parse_args()
    torch.set_num_threads(1)
    results = {run.name: track(run) for run in ns.runs}
    print(f"mean over {REPEATS} reset states per target\n")
    print("| target v* | " + " | ".join(f"{name}: velocity, return" for name in results) + " |")
    print("|---|" + "---|" * len(results))
    for i, v in enumerate(TARGETS):
        cells = [f"{vel[i]:+.2f}, {ret[i]:.0f}{f' ({back[i]} on its back)' if back[i] else ''}"
                 for vel, ret, back in results.values()]
        print(f"| {v:.2f}{' (OOD)' if v > 3 else ''} | " + " | ".join(cells) + " |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.plot(TARGETS, TARGETS, color="black", linestyle="--", label="tracks the target")
    ax.axvspan(3.0, TARGETS[-1], color="grey", alpha=0.15, label="out of distribution")
    for name, (vel, _, _) in results.items():
        ax.plot(TARGETS, vel, marker="o", label=name)
    ax.set_xlabel("target velocity v*")
    ax.set_ylabel(f"mean velocity, steps {SKIP}-200 (mean actions, {REPEATS} starts)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ns.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(ns.out / "tracking.png", dpi=120, bbox_inches="tight")
    print(f"wrote {ns.out / 'tracking.png'}")


if __name__ == "__main__":
    main()
