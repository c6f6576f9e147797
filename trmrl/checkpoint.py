"""Checkpoints written atomically: a crash mid-write leaves the previous checkpoint intact."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from trmrl.errors import CheckpointError
from trmrl.rundir import writing

FORMAT = 1


def save(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically: on any failure (a kill, a full disk) the previous
    checkpoint stays and the temporary file is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with writing(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save({"format": FORMAT, **state}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as exc:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(exc, RuntimeError) and isinstance(exc.__context__, OSError):
                raise exc.__context__ from None  # torch's zip writer wraps a failed write in a RuntimeError
            raise


def load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise CheckpointError(f"corrupt checkpoint {path}: {type(exc).__name__}") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a trmrl checkpoint (format {FORMAT})")
    return state


@contextlib.contextmanager
def restoring() -> Iterator[None]:
    """Around loading a saved state into objects built from the run's config: a missing entry or
    a shape that does not fit becomes one CheckpointError line."""
    try:
        yield
    except (KeyError, RuntimeError, ValueError) as exc:
        # torch's load_state_dict error spans lines (a header, then the missing and unexpected keys)
        detail = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        raise CheckpointError(f"checkpoint does not match its config: {detail}") from exc
