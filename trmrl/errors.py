"""Errors that the command line reports as one line and a non-zero exit (never a traceback), and
warnings about problems a run survives, one line each."""

import sys


class TrmrlError(Exception):
    """Base class: an error the user can act on. `trmrl` prints its message and exits 2."""


class ConfigError(TrmrlError, ValueError):
    """An unknown preset or field, or a config whose fields contradict each other."""


class CheckpointError(TrmrlError):
    """A run directory or checkpoint that is missing, corrupt or incompatible."""


class MissingDependencyError(TrmrlError, ImportError):
    """An optional dependency (e.g. metaworld) is needed but not installed."""


class DivergenceError(TrmrlError, FloatingPointError):
    """A loss or an action became NaN/inf; training stops and keeps the last good checkpoint."""


class DistributedError(TrmrlError):
    """A process of a several-process run could not join the others, lost them (one stopped or
    cannot be reached) or disagrees with them; every process stops, the last checkpoint stays."""


class Interrupted(TrmrlError):
    """SIGTERM (a scheduler's preemption) or SIGINT (Ctrl-C) stopped training at the end of an
    epoch, after a checkpoint; `trmrl train --resume` continues it as if nothing happened."""

    def __init__(self, signal_name: str, epoch: int, run_dir: object) -> None:
        super().__init__(f"stopped by {signal_name} after epoch {epoch}, checkpoint written; "
                         f"continue with `trmrl train --resume {run_dir}`")
        self.signal_name = signal_name


def warn(message: str) -> None:
    """Something the run survives but the user should know: one line on stderr."""
    print(f"trmrl: warning: {message}", file=sys.stderr)

