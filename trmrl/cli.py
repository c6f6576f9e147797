"""`trmrl train PRESET [--field value ...]` and `trmrl train --resume RUN_DIR`: dispatch only.

Every user error ends as one `trmrl: error: ...` line and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from trmrl.config import TrainConfig
from trmrl.errors import CheckpointError, ConfigError, TrmrlError

USAGE = """usage:
  trmrl train [PRESET] [--FIELD VALUE ...]   meta-train, then meta-test (default preset: {default})
  trmrl train --resume RUN_DIR [--total-env-steps N]
  trmrl presets                               list the named presets
  trmrl train PRESET --help                   every field, with its default in that preset
"""


def _parse_config(preset: str, args: Sequence[str]) -> TrainConfig:
    """tyro parses the overrides; its boxed error report is folded into one line."""
    import tyro

    from trmrl.presets import get_preset

    default = get_preset(preset)
    prog = f"trmrl train {preset}"
    if any(a in ("-h", "--help") for a in args):
        return tyro.cli(TrainConfig, default=default, args=args, prog=prog)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(captured):
            return tyro.cli(TrainConfig, default=default, args=args, prog=prog)
    except SystemExit as exc:
        if exc.code in (0, None):
            raise
        raise ConfigError(_one_line(captured.getvalue()) + f" (see {prog} --help)") from None


def _one_line(report: str) -> str:
    """The title and message of tyro's error box, without borders and help hints."""
    lines = []
    for line in report.splitlines():
        text = re.sub(r"[│╭╮╰╯─━|]+", " ", line).strip()
        if text.startswith(("For full helptext", "Argument helptext")):
            break
        if not re.fullmatch(r"[-=_+ ]*", text):
            lines.append(text)
    return " ".join(lines[1:] if len(lines) > 1 else lines) or "invalid arguments"


def _default_run_dir(config: TrainConfig) -> Path:
    return Path("runs") / f"{config.preset}-s{config.seed}-{time.strftime('%Y%m%d-%H%M%S')}"


def _print_summary(summary: dict, run_dir: Path) -> None:
    if summary:
        print(f"\nmeta-test: {summary['n_tasks']} held-out tasks, trials of {summary['episodes']} episodes "
              f"({'mean' if summary['deterministic'] else 'sampled'} actions)")
        print("episode  return   random policy")
        for k, (ret, rnd) in enumerate(zip(summary["return_per_episode"], summary["random_return_per_episode"])):
            print(f"{k:>7}  {ret:8.2f}  {rnd:8.2f}")
    print(f"run directory: {run_dir}")


def train_command(args: list[str]) -> None:
    from trmrl.train import train

    if "--resume" in args:
        parser = argparse.ArgumentParser(prog="trmrl train --resume", exit_on_error=False)
        parser.add_argument("--resume", type=Path, required=True, metavar="RUN_DIR")
        parser.add_argument("--total-env-steps", type=int, default=None)
        parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
        try:
            ns = parser.parse_args(args)
        except argparse.ArgumentError as exc:
            raise ConfigError(str(exc)) from None
        config = load_run_config(ns.resume)
        changes = {k: v for k, v in (("total_env_steps", ns.total_env_steps), ("progress", ns.progress)) if v is not None}
        config = _replace(config, **changes)
        summary = train(config, ns.resume, resume=True)
        _print_summary(summary, ns.resume)
        return
    from trmrl.presets import DEFAULT_PRESET

    preset = args[0] if args and not args[0].startswith("-") else DEFAULT_PRESET
    rest = args[1:] if args and not args[0].startswith("-") else args
    config = _parse_config(preset, rest)
    run_dir = config.run_dir or _default_run_dir(config)
    if (run_dir / "checkpoint.pt").exists():
        raise ConfigError(f"{run_dir} already holds a run; continue it with: trmrl train --resume {run_dir}")
    config = _replace(config, run_dir=run_dir, preset=preset)
    print(f"run directory: {run_dir}")
    _print_summary(train(config, run_dir), run_dir)


def _replace(config: TrainConfig, **changes: object) -> TrainConfig:
    import dataclasses

    return dataclasses.replace(config, **changes)


def load_run_config(run_dir: Path) -> TrainConfig:
    """The resolved config a run directory was started with."""
    import json

    from trmrl.config import from_dict

    path = run_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no config.json)")
    try:
        return from_dict(TrainConfig, json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise CheckpointError(f"unreadable {path}: {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    from trmrl.presets import DEFAULT_PRESET, PRESETS

    try:
        if not args or args[0] in ("-h", "--help"):
            print(USAGE.format(default=DEFAULT_PRESET))
            return 0
        if args[0] == "train":
            train_command(args[1:])
        elif args[0] == "presets":
            for name, (description, _) in PRESETS.items():
                print(f"{name:<14} {description}")
        else:
            raise ConfigError(f"unknown command '{args[0]}'; commands: train, presets")
    except TrmrlError as exc:
        print(f"trmrl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("trmrl: interrupted; a run continues from its last checkpoint with `trmrl train --resume RUN_DIR`",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
