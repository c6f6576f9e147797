"""Task distributions and algorithms from other packages, found in every process of a run.

Two ways: a package declares an entry point in the group `trmrl.plugins` (loaded the first time
a name is not found in a registry), or a run names modules with `--imports MODULE ...`
(imported before its config is read, recorded in `config.json`, so `trmrl eval`, `--resume`
and `--nproc` import them again). A module registers what it brings when it is imported
(`trmrl.tasks.register`, `trmrl.algos.register`).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from importlib import metadata

from trmrl.errors import ConfigError

GROUP = "trmrl.plugins"
_loaded_entry_points = False


def load_entry_points() -> bool:
    """Import every `trmrl.plugins` entry point once; whether this call loaded them."""
    global _loaded_entry_points
    if _loaded_entry_points:
        return False
    _loaded_entry_points = True
    for entry in metadata.entry_points(group=GROUP):
        try:
            entry.load()
        except Exception as exc:  # a broken plugin is named, not a traceback
            raise ConfigError(f"plugin '{entry.name}' ({entry.value}) failed to load: {exc}") from None
    return True


def import_modules(names: Sequence[str]) -> None:
    """Import the run's `--imports` modules, from the working directory too (as `python -m` would)."""
    if names and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"--imports {name}: {exc} (the module must be importable from the working directory "
                              f"or PYTHONPATH in every process that reads the run)") from None
