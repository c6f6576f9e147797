"""The run directory, in one place: every other module asks it for paths.

    RUN_DIR/
      config.json       the resolved TrainConfig (algorithm, task, seeds, every field)
      versions.json     package versions and the git revision of the code
      metrics.jsonl     one JSON record per epoch, and one per during-training meta-test
      tb/               TensorBoard events, same keys
      checkpoint.pt     latest checkpoint (written atomically)
      eval/             meta-test results (<protocol>.json and .csv), attention

Enough to resume, evaluate or plot a run from its path alone.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trmrl.errors import CheckpointError

if TYPE_CHECKING:
    from trmrl.config import TrainConfig


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def versions(self) -> Path:
        return self.root / "versions.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tb"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.pt"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    def eval_result(self, name: str) -> Path:
        """eval/<name>.json: a meta-test result (its CSV twin beside it)."""
        return self.eval / f"{name}.json"

    @staticmethod
    def default(name: str, seed: int) -> RunDir:
        """runs/<name>-s<seed>-<time>."""
        return RunDir(Path("runs") / f"{name}-s{seed}-{time.strftime('%Y%m%d-%H%M%S')}")

    def check_new(self) -> None:
        """Refuse a directory that already holds a run (a checkpoint): it is resumed, not restarted."""
        if self.checkpoint.exists():
            raise CheckpointError(f"{self.root} already holds a run; continue it with: trmrl train --resume "
                                  f"{self.root} (or choose another run directory)")

    def create(self, config: TrainConfig) -> None:
        """Make the directory and describe the run in it. What an attempt killed before its first
        checkpoint left (metrics, TensorBoard events, results) is removed, so the new run's files
        are those of an uninterrupted run."""
        from trmrl.config import to_dict

        self.check_new()
        self.root.mkdir(parents=True, exist_ok=True)
        self.metrics.unlink(missing_ok=True)
        for stale in (self.tensorboard, self.eval):
            if stale.is_dir():
                shutil.rmtree(stale)
        self.remove_partial_checkpoints()
        write_json(self.config, to_dict(config))
        write_json(self.versions, versions())

    def remove_partial_checkpoints(self) -> None:
        """Temporary checkpoint files a kill mid-write left behind (`checkpoint.save`'s)."""
        for partial in self.root.glob(f".{self.checkpoint.name}.*.tmp"):
            partial.unlink(missing_ok=True)


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


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Name `path` in a file-system fault raised while writing it: a write() that fails on a full
    disk raises an OSError without a file name, and the command line reports path and cause."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise


def write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically: a kill or a fault mid-write leaves the previous file (or
    none), and no temporary file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        with writing(path):
            tmp.write_text(text)
            tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def read_json(path: Path) -> Any:
    """A JSON file of a run directory; an unreadable one is a CheckpointError naming it."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"unreadable {path}: {exc}") from None
