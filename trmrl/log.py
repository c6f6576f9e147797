"""Metric writers (the layout of a run directory is `trmrl.rundir`).

Metric keys: `charts/` (env steps, returns, speed), `losses/` (PPO), `time/` (seconds spent
sampling and updating), `meta_test/episode_k/return` (held-out tasks, episode k of a trial).
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from trmrl.errors import CheckpointError, MissingDependencyError, warn
from trmrl.rundir import RunDir, write_text, writing


class MetricLogger:
    """Writes each record to metrics.jsonl and TensorBoard (x axis: env steps).

    On resume, records after the checkpoint are dropped from both, so that a resumed run's
    files match an uninterrupted run's.
    """

    def __init__(self, run: RunDir, completed_epochs: int | None = None,
                 hparams: dict[str, Any] | None = None, track: bool = False) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.path = run.metrics
        purge_step, rewrite = None, []
        if completed_epochs is not None and self.path.exists():
            records = read_metrics(run.root)
            kept = [r for r in records if r["epoch"] < completed_epochs]
            write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
            if len(kept) < len(records):
                # TensorBoard drops every event at or after purge_step, whatever its tag. A meta-test
                # is logged at the env steps of the training record before it, so purging the first
                # dropped record's step also drops kept records at that step: write those again.
                purge_step = min(r["charts/env_steps"] for r in records[len(kept):])
                rewrite = [r for r in kept if r["charts/env_steps"] >= purge_step]
        self.tensorboard = run.tensorboard
        with writing(self.tensorboard):
            self.writer = SummaryWriter(str(self.tensorboard), purge_step=purge_step)
            for record in rewrite:
                self._add_scalars(record)
            if hparams is not None and completed_epochs is None:  # once, when the run starts
                self._add_hparams(hparams)
        self.tracker = Tracker(run, hparams or {}) if track else None
        if self.tracker is not None:
            for record in rewrite:
                self.tracker.log(record)

    def _add_hparams(self, config: dict[str, Any]) -> None:
        """The run's config in TensorBoard's HParams tab (one flat `section.field` per column),
        beside the metrics a comparison of runs reads first."""
        from torch.utils.tensorboard.summary import hparams

        flat = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in flatten(config).items()}
        metrics = {key: 0.0 for key in ("charts/episode_return", "meta_test/episode_0/return",
                                        "meta_test/episode_1/return", "charts/success")}
        for summary in hparams(flat, metrics):
            self.writer.file_writer.add_summary(summary)

    def _add_scalars(self, record: dict[str, Any]) -> None:
        for key, value in record.items():
            if key not in ("epoch", "charts/env_steps"):
                self.writer.add_scalar(key, value, record["charts/env_steps"])

    def log(self, epoch: int, env_steps: int, metrics: dict[str, float]) -> None:
        record = {"epoch": epoch, "charts/env_steps": env_steps, **metrics}
        with writing(self.path), self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        with writing(self.tensorboard):
            self._add_scalars(record)
        if self.tracker is not None:
            self.tracker.log(record)

    def flush(self) -> None:
        """Write TensorBoard's queued events (before a checkpoint: a kill must not lose what it covers)."""
        with writing(self.tensorboard):
            self.writer.flush()

    def close(self) -> None:
        with writing(self.tensorboard):
            self.writer.close()
        if self.tracker is not None:
            self.tracker.close()


class Tracker:
    """Weights & Biases beside TensorBoard: the same keys, plotted against `charts/env_steps`; one
    W&B run per run directory (its id kept there, so a resume continues it); the config and the
    package versions attached."""

    def __init__(self, run: RunDir, config: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError:
            raise MissingDependencyError("--track logs to Weights & Biases: pip install 'trmrl[track]'") from None
        id_file = run.root / "wandb-id"
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
        write_text(id_file, run_id + "\n")
        versions = json.loads(run.versions.read_text()) if run.versions.is_file() else {}
        self.run = wandb.init(project="trmrl", name=run.root.name, id=run_id, resume="allow", dir=str(run.root),
                              config=config | {"versions": versions})
        self.run.define_metric("charts/env_steps")
        self.run.define_metric("*", step_metric="charts/env_steps")

    def log(self, record: dict[str, Any]) -> None:
        self.run.log({k: v for k, v in record.items() if k != "epoch"})

    def close(self) -> None:
        self.run.finish()


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"window": 5}} -> {"model.window": 5}."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[prefix + key] = value
    return out


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of a run directory's metrics.jsonl. A last line cut by a kill (or a full disk)
    is skipped with a warning; an unreadable line anywhere else is a CheckpointError."""
    path = RunDir(run_dir).metrics
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise CheckpointError(f"{path} is corrupt: line {number} is not a JSON record") from None
            warn(f"{path}: skipped its last line, cut short (the run was interrupted while writing it)")
    return records
