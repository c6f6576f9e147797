"""`trmrl train PRESET [--field value ...]` and `trmrl train --resume RUN_DIR`: dispatch only.

Every user error ends as one `trmrl: error: ...` line and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import itertools
import os
import re
import sys
import threading
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

# torch's C++ side logs a failed rendezvous or a lost peer with its stack frames; the error
# reaches the user as one line below instead (a user's own setting wins)
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")

from trmrl.config import RunSettings, TrainConfig, sections
from trmrl.errors import CheckpointError, ConfigError, Interrupted, TrmrlError
from trmrl.rundir import RunDir, read_json

_D = TypeVar("_D")

USAGE = """usage:
  trmrl train [PRESET] [--FIELD VALUE ...]   meta-train, then meta-test (default preset: {default})
  trmrl train [PRESET] --config FILE [...]    the same from a TOML/YAML file or a run's config.json
  trmrl train --resume RUN_DIR [--total-env-steps N] [--device D]
  trmrl train ... --nproc N                   the same over N processes on this machine (torchrun)
  trmrl eval RUN_DIR|CHECKPOINT [--protocol adaptation|ood|meta-evaluator|...] [--n-tasks N]
             [--episodes K] [--sampled] [--seed S] [--attention]
  trmrl plot RUN_DIR [RUN_DIR ...] [--out DIR] [--no-paper]   learning and adaptation curves over seeds
  trmrl sweep PRESET --grid FIELD=V1,V2 [--seeds 1 2 3] [--jobs N] [--baseline FIELD=V] [--FIELD VALUE ...]
                                              a grid x seeds, parallel and resumable: one table, one figure
  trmrl presets                               list the named presets and task distributions
  trmrl algos                                 list the algorithms (trmrl train PRESET --algo NAME)
  trmrl train PRESET --help                   every field, with its default in that preset
"""


@dataclass(frozen=True)
class CommandLine(RunSettings):
    """A run as the command line sees it: the run's settings, the algorithm, and (added per
    algorithm by `command_line`) that algorithm's sections, so that `--help` lists what the
    algorithm uses and an option of another algorithm is an error."""

    algo: str = "trmrl"
    """Meta-RL algorithm (`trmrl algos` lists them); the preset's when omitted."""


def command_line(algo: str) -> type[CommandLine]:
    """`CommandLine` with the sections of `algo`'s config as options (`--model.window`, ...)."""
    from trmrl.algos import config_class

    cls = config_class(algo)
    hints = typing.get_type_hints(cls)
    return dataclasses.make_dataclass(
        "TrainConfig", [(f.name, hints[f.name], dataclasses.field(default_factory=f.default_factory))  # type: ignore[arg-type]
                        for f in dataclasses.fields(cls)], bases=(CommandLine,), frozen=True)


def _to_command_line(config: TrainConfig) -> CommandLine:
    view = command_line(config.algo)
    settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(RunSettings)}
    return view(**settings, algo=config.algo, **{name: getattr(config.agent, name) for name in sections(config.agent)})


def _from_command_line(parsed: CommandLine) -> TrainConfig:
    from trmrl.algos import config_class

    cls = config_class(parsed.algo)
    agent = cls(**{f.name: getattr(parsed, f.name) for f in dataclasses.fields(cls)})
    return TrainConfig(**{f.name: getattr(parsed, f.name) for f in dataclasses.fields(RunSettings)}, agent=agent)


def read_config_file(path: Path) -> dict[str, typing.Any]:
    """A config file's fields: TOML, YAML or JSON (a run's own config.json), by its suffix."""
    import json
    import tomllib

    if path.suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise ConfigError(f"--config {path}: a .toml, .yaml, .yml or .json file, please")
    try:
        text = path.read_text()
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise ConfigError(f"--config {path}: not valid {path.suffix[1:].upper()} ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: holds no fields (a table of `field = value` and `[section]`s)")
    return data


def _merge(base: dict[str, typing.Any], changes: dict[str, typing.Any]) -> dict[str, typing.Any]:
    """`base` with `changes`, section by section."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _starting_config(preset: str | None, args: Sequence[str]) -> TrainConfig:
    """The preset (for --algo), with a --config file's fields over it: the file may name the
    preset and algorithm itself; a run directory comes from the command line, never a file."""
    from trmrl.algos import load_config
    from trmrl.config import to_dict
    from trmrl.presets import DEFAULT_PRESET, get_preset

    file = _option_value(args, "--config")
    data = read_config_file(Path(file)) if file else {}
    preset = preset or data.get("preset") or DEFAULT_PRESET
    base = get_preset(preset, _option_value(args, "--algo") or data.get("algo"))
    if not data:
        return base
    changes = {k: v for k, v in data.items() if k not in ("run_dir", "algo")} | {"preset": preset}
    try:
        return load_config(_merge(to_dict(base), changes))
    except TypeError as exc:
        raise ConfigError(f"--config {file}: {exc}") from None


def _option_value(args: Sequence[str], option: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == option:
            if i + 1 == len(args) or args[i + 1].startswith("--"):
                raise ConfigError(f"{option} takes a value")
            return args[i + 1]
        if arg.startswith(option + "="):
            return arg.split("=", 1)[1]
    return None


def _without_option(args: Sequence[str], option: str) -> list[str]:
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out


def _parse_config(preset: str | None, args: Sequence[str]) -> TrainConfig:
    """tyro parses the overrides against the view of the chosen algorithm, over the preset and a
    --config file; its boxed error report is folded into one line."""
    import tyro

    from trmrl.plugins import import_modules

    import_modules(_imports_argument(args))  # before anything looks up a task or an algorithm by name
    default = _starting_config(preset, args)
    preset = default.preset
    args = _without_option(args, "--config")
    from trmrl.presets import get_preset

    view = command_line(default.algo)
    prog = f"trmrl train {preset}" + ("" if default.algo == get_preset(preset).algo else f" --algo {default.algo}")
    if any(a in ("-h", "--help") for a in args):
        return _from_command_line(tyro.cli(view, default=_to_command_line(default), args=args, prog=prog))
    _check_options(args, prog, view, default.algo)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(captured):
            parsed = tyro.cli(view, default=_to_command_line(default), args=args, prog=prog)
    except SystemExit as exc:
        if exc.code in (0, None):
            raise
        raise ConfigError(_one_line(captured.getvalue()) + f" (see {prog} --help)") from None
    return _from_command_line(parsed)


def config_options(cls: type, prefix: str = "") -> set[str]:
    """Every command-line option of a config dataclass: --section.field-name, and --no-... for a
    flag (the spelling tyro gives them)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls, include_extras=True)
    options: set[str] = set()
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if "Suppress" in repr(hint):
            continue
        name = prefix + f.name.replace("_", "-")
        if dataclasses.is_dataclass(hint):
            options |= config_options(hint, name + ".")
            continue
        head, _, last = name.rpartition(".")
        options.add(f"--{name}")
        if hint is bool:
            options.add(f"--{head + '.' if head else ''}no-{last}")
    return options


def _check_options(args: Sequence[str], prog: str, view: type[CommandLine], algo: str) -> None:
    """Unknown options are named here, with the nearest known one (or the algorithm whose option
    it is), rather than read out of tyro's error report."""
    import difflib

    from trmrl.algos import ALGORITHMS, config_class

    known = config_options(view)
    owners = {name: {f.name for f in dataclasses.fields(config_class(name))} for name in ALGORITHMS}
    for i, arg in enumerate(args):
        option, _, inline = arg.partition("=")
        if option.startswith("--") and option not in known:
            section = option[2:].partition(".")[0]
            if section not in owners[algo] and (users := [name for name, own in owners.items()
                                                           if "." in option and section in own]):
                raise ConfigError(f"{option} is an option of {' and '.join(users)}, not of this run's algorithm "
                                  f"'{algo}'; see {prog} --help")
            near = difflib.get_close_matches(option, known, n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise ConfigError(f"unknown option {option}{hint}; see {prog} --help")
        value = inline or (args[i + 1] if i + 1 < len(args) else "")
        if (pair := _flag_pair(option, known)) and value.lower() in BOOLEAN_WORDS:
            raise ConfigError(f"{option} is a flag and takes no value: write {pair[0]} or {pair[1]}")


BOOLEAN_WORDS = ("true", "false", "yes", "no", "1", "0", "on", "off")


def _flag_pair(option: str, known: set[str]) -> tuple[str, str] | None:
    """(--x, --no-x) if `option` is either spelling of a boolean flag."""
    head, dot, last = option.removeprefix("--").rpartition(".")
    prefix = f"--{head}{dot}"
    on = prefix + last.removeprefix("no-")
    off = prefix + "no-" + last.removeprefix("no-")
    return (on, off) if on in known and off in known else None


def _imports_argument(args: Sequence[str]) -> list[str]:
    """The modules after --imports, if given (tyro parses them again into the config)."""
    if "--imports" not in args:
        return []
    rest = args[args.index("--imports") + 1:]
    return [a for a in itertools.takewhile(lambda a: not a.startswith("--"), rest)]


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


def _print_summary(summary: dict, run_dir: Path, preset: str, algo: str) -> None:
    """The end-of-training meta-tests: return (and success) per episode index beside a random
    policy on the same tasks and, where the paper reports one, the paper's figure; for a protocol
    with adaptation episodes, the success over its evaluation episodes per held-out class."""
    import numpy as np

    from trmrl.paper import adaptation_reference

    parts = [("adaptation", summary), *((k, v) for k, v in summary.items() if isinstance(v, dict) and "protocol" in v)]
    for name, part in parts:
        if not part:  # no final meta-test (eval.final off)
            continue
        paper = adaptation_reference(preset, name, algo)
        success = "success_per_episode" in part
        oracle = "oracle_return_per_episode" in part
        trials = part.get("trials_per_task", 1)
        print(f"\nmeta-test ({name}): {part['n_tasks']} held-out tasks of {part.get('distribution', 'the run')}, "
              + (f"{trials} trials of {part['episodes']} episode(s) each" if trials > 1
                 else f"trials of {part['episodes']} episodes")
              + f" ({'mean' if part['deterministic'] else 'sampled'} actions)")
        if trials > 1:  # independent trials: their mean, not a row per trial
            overall = part.get("evaluation") or {}
            print(f"return {np.mean(part['return_per_episode']):.2f} (random policy "
                  f"{np.mean(part['random_return_per_episode']):.2f})")
            if success:
                _print_success_by_class(overall, part["per_class"], part["adaptation_episodes"], part["episodes"], trials)
            continue
        print("episode    return  random policy" + ("    oracle  gap closed" if oracle else "")
              + ("  success  random" if success else "") + ("     paper" if paper else ""))
        for k, (ret, rnd) in enumerate(zip(part["return_per_episode"], part["random_return_per_episode"])):
            value = paper.at(k) if paper else None
            line = f"{k:>7}  {ret:8.2f}  {rnd:13.2f}"
            if oracle:
                line += f"  {part['oracle_return_per_episode'][k]:8.2f}  {part['gap_closed_per_episode'][k]:10.2f}"
            if success:
                line += f"  {part['success_per_episode'][k]:7.2f}  {part['random_success_per_episode'][k]:6.2f}"
            print(line + (f"  {value:8.2f}" if value is not None else ""))
        if oracle:
            print("oracle: a greedy agent that knows the goal; gap closed: (return - random) / (oracle - random)")
        if paper:
            print(f"paper: {paper.label}, the mean of its 3 seeds read from its plot")
        if part.get("adaptation_episodes") and not success:
            _print_evaluation_return(part["evaluation"], part["random_evaluation"]["return_mean"],
                                     part["adaptation_episodes"], part["episodes"])
        if success:
            _print_success_by_class(part["evaluation"], part["per_class"], part["adaptation_episodes"], part["episodes"])
    print(f"run directory: {run_dir}")


def _print_evaluation_return(evaluation: dict, random: float, adaptation_episodes: int, episodes: int) -> None:
    """The return a protocol with adaptation episodes reports: over its evaluation episodes."""
    print(f"return over episodes {adaptation_episodes}-{episodes - 1} (after {adaptation_episodes} adaptation "
          f"episodes; MAML and PEARL explore in them): {evaluation['return_mean']:.2f} "
          f"[{evaluation['return_mean_ci_low']:.2f}, {evaluation['return_mean_ci_high']:.2f}], 95% CI over tasks "
          f"(random policy {random:.2f})")


def _print_success_by_class(overall: dict, per_class: dict, adaptation_episodes: int, episodes: int,
                            trials: int = 1) -> None:
    """Success rate over the evaluation episodes, in all and per held-out class, with 95% CIs."""
    after = f" (after {adaptation_episodes} adaptation episodes)" if adaptation_episodes else ""
    each = f" of each of {trials} trials" if trials > 1 else ""
    print(f"success over episodes {adaptation_episodes}-{episodes - 1}{each}{after}, 95% CI over tasks:")
    for label, row in (("all", overall), *per_class.items()):
        print(f"  {label:<28} {row['success_rate']:5.2f}  [{row['success_ci_low']:.2f}, "
              f"{row['success_ci_high']:.2f}]  ({row['n_tasks']} tasks)")


def _take_nproc(args: list[str]) -> tuple[int, list[str]]:
    """(--nproc N, the other arguments)."""
    for i, arg in enumerate(args):
        if arg == "--nproc" or arg.startswith("--nproc="):
            value = arg.split("=", 1)[1] if "=" in arg else (args[i + 1] if i + 1 < len(args) else "")
            if not value.isdigit() or int(value) < 1:
                raise ConfigError(f"--nproc takes a number of processes >= 1, not '{value}'")
            return int(value), args[:i] + args[i + (1 if "=" in arg else 2):]
    return 1, args


def train_command(args: list[str]) -> int:
    from trmrl import distributed
    from trmrl.train import train

    nproc, args = _take_nproc(args)
    if "--resume" in args:
        parser = _Parser(prog="trmrl train --resume", exit_on_error=False)
        parser.add_argument("--resume", type=Path, required=True, metavar="RUN_DIR")
        parser.add_argument("--total-env-steps", type=int, default=None)
        parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
        parser.add_argument("--device", default=None)
        parser.add_argument("--torch-threads", type=int, default=None)
        try:
            ns, others = parser.parse_known_args(args)
        except argparse.ArgumentError as exc:
            raise ConfigError(str(exc)) from None
        if others:
            raise ConfigError(f"a resumed run keeps its config; only --total-env-steps (to extend it), --device, "
                              f"--torch-threads, --nproc and --[no-]progress may change, not {' '.join(others)} "
                              f"(start a new run for that)")
        from trmrl.algos import read_run_config

        config = read_run_config(ns.resume)
        changes = {k: v for k, v in (("total_env_steps", ns.total_env_steps), ("progress", ns.progress),
                                     ("device", ns.device), ("torch_threads", ns.torch_threads)) if v is not None}
        config = _replace(config, **changes)
        run_dir = ns.resume
        if not RunDir(run_dir).checkpoint.is_file():
            raise CheckpointError(f"no checkpoint at {RunDir(run_dir).checkpoint}")
    else:
        preset = args[0] if args and not args[0].startswith("-") else None
        rest = args[1:] if preset else args
        config = _parse_config(preset, rest)
        preset = config.preset
        run_dir = config.run_dir or RunDir.default(_run_name(config), config.seed).root
        if config.run_dir is None:  # the processes `--nproc` starts take this one (its time stamp)
            args = [*args, "--run-dir", str(run_dir)]
        RunDir(run_dir).check_new()
        config = _replace(config, run_dir=run_dir, preset=preset)
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        from trmrl.train import check_data_parallel

        check_data_parallel(config, nproc)  # before starting anything
        return distributed.launch(nproc, ["train", *args], config.torch_threads)
    try:
        with distributed.session(config.device, config.dist_timeout) as world:
            if world.size > 1 and "--resume" not in args:
                run_dir = distributed.broadcast(run_dir)  # a torchrun launch: rank 0's default name
                config = _replace(config, run_dir=run_dir)
            if world.rank == 0 and "--resume" not in args:
                print(f"run directory: {run_dir}")
                if note := budget_note(config):
                    print(note)
            summary = train(config, run_dir, resume="--resume" in args)
            if world.rank == 0:
                _print_summary(summary, run_dir, config.preset, config.algo)
    except Interrupted as exc:  # stopped after an epoch, its checkpoint written
        print(f"trmrl: {exc}", file=sys.stderr)
        return 143 if exc.signal_name == "SIGTERM" else 130
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside the epochs (setup, final meta-test)
        print(interrupted_message(run_dir), file=sys.stderr)
        return 130
    return 0


def _run_name(config: TrainConfig) -> str:
    """The preset's name, with the algorithm's when it is not the preset's own."""
    from trmrl.presets import get_preset

    own = get_preset(config.preset).algo
    return config.preset if own == config.algo else f"{config.preset}-{config.algo}"


def interrupted_message(run_dir: Path) -> str:
    """The line for a run stopped at once: how to go on from where it stands."""
    if RunDir(run_dir).checkpoint.is_file():
        return f"trmrl: interrupted; it continues from its last checkpoint with `trmrl train --resume {run_dir}`"
    # nothing to resume: the same command starts it again in the same directory
    return f"trmrl: interrupted; no checkpoint was written yet; the same command with `--run-dir {run_dir}` starts it again"


def budget_note(config: TrainConfig) -> str | None:
    """What the run will really collect when the budget is not a whole number of epochs (after
    the initial steps, PEARL's pool): the budget is rounded up to whole epochs."""
    steps = config.env_steps_after(config.n_epochs)
    if steps == config.total_env_steps:
        return None
    initial = f"{config.initial_env_steps:,} initial steps and " if config.initial_env_steps else ""
    return (f"note: --total-env-steps {config.total_env_steps:,} is not whole epochs; the run collects {steps:,} "
            f"steps: {initial}{config.n_epochs:,} epoch(s) of {config.steps_per_epoch:,}")


def _replace(obj: _D, **changes: object) -> _D:
    """A copy of a dataclass (a config, a meta-learner) with `changes`."""
    import dataclasses

    return dataclasses.replace(obj, **changes)  # type: ignore[type-var]


class _Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError (one line) instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{self.prog}: {message}")


def eval_command(args: list[str]) -> None:
    import numpy as np

    from trmrl.evaluate import PROTOCOLS, MetaTester, gap_closed, resolve_protocol
    from trmrl.paper import adaptation_reference
    from trmrl.protocols import ExploresFirst, ShowsAttention
    from trmrl.tasks import make_task_distribution
    from trmrl.train import load_trained

    parser = _Parser(prog="trmrl eval", description="Meta-test a trained agent on held-out tasks.")
    parser.add_argument("path", type=Path, metavar="RUN_DIR_OR_CHECKPOINT")
    parser.add_argument("--protocol", default="adaptation", choices=list(PROTOCOLS),
                        help="adaptation (default): the paper's fast adaptation, 20 held-out tasks x 6 episodes; "
                             "ood: the same on the run's out-of-distribution tasks (cheetah-vel: U[3, 4]); "
                             "during-training: 30 held-out tasks x 2 episodes, as logged while training (the same tasks); "
                             "metaworld: every held-out class and goal, 10 adaptation then 3 evaluation episodes; "
                             "paper-metaworld: the paper's MetaWorld measurement (the author's evaluator), 10 held-out "
                             "tasks x 10 one-episode trials, sampled actions, success at any step; "
                             "meta-evaluator: garage's MetaEvaluator for MAML and PEARL, 20 held-out tasks, 10 "
                             "adaptation (MAML, PEARL: exploration) episodes as garage's, then 3 evaluation episodes")
    parser.add_argument("--n-tasks", type=int, default=None, help="tasks (protocol default)")
    parser.add_argument("--episodes", type=int, default=None, help="episodes per trial (protocol default)")
    actions = parser.add_mutually_exclusive_group()
    actions.add_argument("--sampled", action="store_const", const=False, dest="deterministic",
                         help="sample actions (default: the protocol's own; paper-metaworld samples, the others "
                              "act with the mean)")
    actions.add_argument("--mean", action="store_const", const=True, dest="deterministic",
                         help="act with the policy mean")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the held-out tasks (default: the run's eval.seed, shared by all its seeds)")
    parser.add_argument("--attention", action="store_true", help="also save and plot attention over one trial")
    parser.add_argument("--exploration-episodes", type=int, default=None,
                        help="MAML: episodes before each adaptation step; PEARL: episodes on the prior "
                             "before the posterior (default: the run's maml. / pearl.eval_exploration_episodes)")
    ns = parser.parse_args(args)
    for name in ("n_tasks", "episodes"):
        if getattr(ns, name) is not None and getattr(ns, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
    config, algorithm, run = load_trained(ns.path)
    if ns.attention and not isinstance(algorithm, ShowsAttention):
        raise ConfigError(f"--attention shows TrMRL's attention over its working memories; this run's algorithm "
                          f"is '{config.algo}'")
    learner = algorithm.meta_learner()
    protocol = resolve_protocol(ns.protocol, config.task.name, n_tasks=ns.n_tasks, episodes=ns.episodes,
                                deterministic=ns.deterministic)
    if ns.exploration_episodes is not None:
        if not isinstance(learner, ExploresFirst) or ns.exploration_episodes < 1:
            raise ConfigError("--exploration-episodes takes a count >= 1 and applies to MAML and PEARL runs "
                              f"(this run's algorithm is '{config.algo}')")
        if protocol.adaptation_episodes:
            raise ConfigError(f"protocol '{protocol.name}' explores in its {protocol.adaptation_episodes} adaptation "
                              "episodes; --exploration-episodes applies to protocols without them")
        learner = learner.with_exploration_episodes(ns.exploration_episodes)
    seed = config.eval.seed if ns.seed is None else ns.seed
    distribution = make_task_distribution(config.task.name, **config.task_options())
    tester = MetaTester(distribution, protocol, config.task.max_episode_steps, seed, config.task.vector_env)
    protocol = tester.protocol  # with its task count when it runs every held-out task
    # a result of another protocol (the run's own final meta-test, an earlier eval) is never
    # overwritten: this one then gets a name of its own
    name = protocol.name
    if ns.exploration_episodes is not None or (run.eval_result(name).is_file()
                                               and not tester.same_as(read_json(run.eval_result(name)))):
        name += (f"-{protocol.n_tasks}x{protocol.episodes}-seed{seed}"
                 + ("" if protocol.deterministic else "-sampled")
                 + (f"-explore{ns.exploration_episodes}" if ns.exploration_episodes is not None else ""))
    result, random, oracle = tester.run_with_bounds(learner, run.eval, name)
    json_path, csv_path = run.eval_result(name), run.eval_result(name).with_suffix(".csv")
    trials = f"{protocol.trials_per_task} trials" if protocol.trials_per_task > 1 else "trials"
    print(f"{protocol.name}: {protocol.n_tasks} held-out tasks of {tester.distribution.name} (seed {seed}), "
          f"{trials} of {protocol.episodes} episode{'s' if protocol.episodes > 1 else ''}, "
          f"{'mean' if protocol.deterministic else 'sampled'} actions; "
          f"95% CIs: bootstrap over the {protocol.n_tasks} tasks")
    paper = adaptation_reference(config.preset, protocol.name, config.algo)
    print(("  trial" if protocol.trials_per_task > 1 else "episode") + "     mean   95% CI                  IQM   95% CI                random mean"
          + ("  oracle mean  gap closed" if oracle is not None else "")
          + ("  success" if result.successes is not None else "") + ("    paper" if paper else ""))
    tops, gaps = ((np.nanmean(oracle.returns, axis=0), gap_closed(result.returns, random.returns, oracle.returns))
                  if oracle is not None else ([None] * result.returns.shape[1],) * 2)
    for row, floor, top, gap in zip(result.per_episode(), np.nanmean(random.returns, axis=0), tops, gaps):
        line = (f"{row['episode']:>7} {row['return_mean']:8.2f}   [{row['return_mean_ci_low']:8.2f}, "
                f"{row['return_mean_ci_high']:8.2f}] {row['return_iqm']:8.2f}   [{row['return_iqm_ci_low']:8.2f}, "
                f"{row['return_iqm_ci_high']:8.2f}]   {floor:8.2f}")
        if top is not None:
            line += f"     {top:8.2f}  {gap:10.2f}"
        if "success_rate" in row:
            line += f"     {row['success_rate']:.2f}"
        if paper:
            value = paper.at(row["episode"])
            line += f" {value:8.2f}" if value is not None else "        -"
        print(line)
    if paper:
        print(f"paper: {paper.label}, the mean of its 3 seeds read from its plot")
    if protocol.adaptation_episodes and result.successes is None:
        _print_evaluation_return(result.summary(), random.summary()["return_mean"], protocol.adaptation_episodes,
                                 protocol.episodes)
    if result.successes is not None:
        _print_success_by_class(result.summary(), result.per_class(), protocol.adaptation_episodes, protocol.episodes,
                                protocol.trials_per_task)
    others = f"{name}-random" + (f" and {name}-oracle" if oracle is not None else "")
    print(f"wrote {json_path} and {csv_path} (and {others} beside them)")
    if name != protocol.name:
        print(f"(the run's {protocol.name}.json holds another protocol and was kept; "
              f"plot this one with: trmrl plot RUN_DIR... --protocol {name})")
    if ns.attention:
        for path in algorithm.save_attention(tester, run.eval):
            print(f"wrote {path}")


def sweep_command(args: list[str]) -> None:
    from trmrl.sweep import default_jobs, sweep

    parser = _Parser(prog="trmrl sweep", description="A grid of overrides x seeds: parallel, resumable, one table "
                     "and one figure. Options it does not know are passed to every run (e.g. --total-env-steps).")
    parser.add_argument("preset")
    parser.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2,...",
                        help="an axis of the grid, e.g. model.window=1,5,25 (repeat for more axes)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--jobs", type=int, default=default_jobs(), help="runs at a time (default: one per 2 cores)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: cores / jobs)")
    parser.add_argument("--out", type=Path, default=None, help="sweep directory (default: sweeps/<preset>)")
    parser.add_argument("--baseline", default=None, metavar="FIELD=V",
                        help="the cell the others are compared with (probability of improvement)")
    parser.add_argument("--only", default=None, metavar="CELL-sSEED",
                        help="run this one run of the grid (one job of a cluster array), no report")
    parser.add_argument("--report", action="store_true", help="only write the table and figures of finished runs")
    ns, extra = parser.parse_known_args(args)
    if ns.jobs < 1 or (ns.threads is not None and ns.threads < 1):
        raise ConfigError("--jobs and --threads take a count >= 1")
    threads = ns.threads or max(1, (os.cpu_count() or 1) // ns.jobs)
    _parse_config(ns.preset, extra)  # the flags every run gets, checked once before anything starts
    out = ns.out or Path("sweeps") / ns.preset
    for path in sweep(ns.preset, ns.grid, ns.seeds, out, ns.jobs, threads, extra, ns.baseline, ns.only, ns.report):
        print(f"wrote {path}")


def plot_command(args: list[str]) -> None:
    from trmrl.plot import Style, plot_runs

    parser = _Parser(prog="trmrl plot", description="Learning and adaptation curves, seeds aggregated.")
    parser.add_argument("runs", type=Path, nargs="+", metavar="RUN_DIR")
    parser.add_argument("--out", type=Path, default=Path("plots"), help="output directory (default: plots)")
    parser.add_argument("--protocol", default="adaptation", help="eval result used for adaptation curves")
    parser.add_argument("--paper", action=argparse.BooleanOptionalAction, default=True,
                        help="draw the paper's points for the runs' preset (default: on)")
    parser.add_argument("--size", type=float, nargs=2, metavar=("WIDTH", "HEIGHT"), default=None,
                        help="figure size in inches (default: 5.5 x 4 per panel)")
    parser.add_argument("--statistic", nargs="+", choices=["mean", "iqm"], default=["mean", "iqm"],
                        help="one panel per statistic (default: mean and IQM)")
    parser.add_argument("--curves", nargs="+", choices=["meta-test", "training", "protocols"],
                        default=["meta-test", "training", "protocols"],
                        help="learning-curve quantities: the held-out meta-test, the training episodes, the run's "
                             "other protocols (default: all it logged)")
    ns = parser.parse_args(args)
    if ns.size is not None and min(ns.size) <= 0:
        raise ConfigError("--size takes a positive width and height in inches")
    if any(a == "--protocol" or a.startswith("--protocol=") for a in args):  # asked for by name: it must exist
        _check_results(ns.runs, ns.protocol)
    style = Style(tuple(ns.size) if ns.size else None, tuple(dict.fromkeys(ns.statistic)), tuple(ns.curves))
    for path in plot_runs(ns.runs, ns.out, ns.protocol, ns.paper, style):
        print(f"wrote {path}")


def _check_results(runs: Sequence[Path], protocol: str) -> None:
    """Runs without an `eval/<protocol>.json`: an error if none has one (naming the results they
    have), a warning naming each that lacks it otherwise."""
    missing = [r for r in runs if not RunDir(r).eval_result(protocol).is_file()]
    if len(missing) == len(runs):
        have = sorted({f.stem for r in runs for f in RunDir(r).eval.glob("*.json")
                       if not f.stem.endswith(("-random", "-oracle"))})
        raise ConfigError(f"no run has a '{protocol}' result (eval/{protocol}.json); "
                          f"they have: {', '.join(have) or 'none (trmrl eval RUN_DIR makes one)'}")
    for run in missing:
        print(f"trmrl: warning: {run} has no '{protocol}' result; its adaptation curve is left out", file=sys.stderr)


def _quiet_writer_threads(args: threading.ExceptHookArgs) -> None:
    """TensorBoard's writer thread re-raises a failed write (a full disk) after handing it to the
    main thread, which reports it in one line: keep the thread's traceback off the terminal."""
    if not issubclass(args.exc_type, OSError):
        threading.__excepthook__(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    threading.excepthook = _quiet_writer_threads
    from trmrl.presets import DEFAULT_PRESET, PRESETS

    try:
        if not args or args[0] in ("-h", "--help"):
            print(USAGE.format(default=DEFAULT_PRESET))
            return 0
        if args[0] == "train":
            return train_command(args[1:])
        elif args[0] == "eval":
            eval_command(args[1:])
        elif args[0] == "plot":
            plot_command(args[1:])
        elif args[0] == "sweep":
            sweep_command(args[1:])
        elif args[0] == "presets":
            from trmrl.presets import ALGO_PRESETS
            from trmrl.tasks import families, registered

            print("presets (trmrl train PRESET [--algo NAME]):")
            for name, (description, config) in PRESETS.items():
                algos = [config.algo] + [a for (n, a) in ALGO_PRESETS if n == name]
                print(f"  {name:<18} {description} [{', '.join(algos)}]")
            print("task distributions (--task.name NAME):")
            for name, entry in registered().items():
                print(f"  {name:<18} {entry.summary}")
            for entry in families().values():
                print(f"  {entry.name:<18} {entry.summary}")
        elif args[0] == "algos":
            from trmrl.algos import ALGORITHMS

            for name, (summary, _) in ALGORITHMS.items():
                print(f"{name:<14} {summary}")
        else:
            raise ConfigError(f"unknown command '{args[0]}'; commands: train, eval, plot, sweep, presets, algos")
    except TrmrlError as exc:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = f"[process {os.environ.get('RANK', '0')} of {size}] " if size > 1 else ""
        print(f"trmrl: error: {rank}{exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno is None:
            raise
        # a file-system fault (no permission, read-only or full disk, a file where a directory
        # should be): name the path and the cause
        path = f"{exc.filename}: " if exc.filename else ""
        print(f"trmrl: error: {path}{exc.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("trmrl: interrupted; a run continues from its last checkpoint with `trmrl train --resume RUN_DIR`",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
