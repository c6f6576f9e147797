"""The run directory and its metric writers.

    RUN_DIR/
      config.json       resolved TrainConfig
      versions.json     package versions and the git revision of the code
      metrics.jsonl     one JSON object per epoch (and one per meta-test)
      tb/               TensorBoard events, same keys
      checkpoint.pt     latest checkpoint (atomic)
      eval/             meta-test results (<protocol>.json and .csv), plots

Metric keys: `charts/` (env steps, returns, speed), `losses/` (PPO), `time/` (seconds spent
sampling and updating), `meta_test/episode_k/return` (held-out tasks, episode k of a trial).
"""

from __future__ import annotations

import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("trmrl", "torch", "numpy", "gymnasium", "mujoco", "tyro", "metaworld")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    out["git_revision"] = git_revision()
    return out


def git_revision() -> str:
    source = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=source, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if rev.returncode != 0:
        return "unknown"
    return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


class MetricLogger:
    """Writes each record to metrics.jsonl and TensorBoard (x axis: env steps).

    On resume, records after the checkpoint are dropped from both, so that a resumed run's
    files match an uninterrupted run's.
    """

    def __init__(self, run_dir: Path, completed_epochs: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.path = run_dir / "metrics.jsonl"
        purge_step = None
        if completed_epochs is not None and self.path.exists():
            records = read_metrics(run_dir)
            kept = [r for r in records if r["epoch"] < completed_epochs]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
            dropped = [r["charts/env_steps"] for r in records if r["epoch"] >= completed_epochs]
            purge_step = min(dropped) if dropped else None
        self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=purge_step)

    def log(self, epoch: int, env_steps: int, metrics: dict[str, float]) -> None:
        record = {"epoch": epoch, "charts/env_steps": env_steps, **metrics}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, env_steps)

    def close(self) -> None:
        self.writer.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
