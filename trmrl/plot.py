"""`trmrl plot`: learning curves (meta-test return vs env steps; the success rate too for tasks
that report success) and adaptation curves (return vs episode index of a trial) of several runs,
seeds aggregated: mean and IQM with 95% stratified bootstrap confidence bands (`trmrl.stats`).

Runs are grouped by their directory name without the seed suffix, so `runs/point-nav-s1-...`
and `runs/point-nav-s2-...` form one curve and `runs/ant-dir-s1-...` another; runs of one group
whose configs differ in more than the seed are split into curves labelled by what differs, with a
warning.
"""

from __future__ import annotations

import csv
import io
import itertools
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trmrl.errors import CheckpointError, ConfigError, warn
from trmrl.log import flatten, read_metrics
from trmrl.paper import Reference, adaptation_reference, learning_references
from trmrl.rundir import RunDir, read_json, write_text
from trmrl.stats import Aggregate, aggregate, probability_of_improvement

META_TEST = re.compile(r"meta_test/episode_(\d+)/(return|success)")
OTHER_PROTOCOL = re.compile(r"meta_test/([a-z0-9-]+)/(return|success)")  # `eval.also`: one value per protocol
TRAINING = {"return": "charts/episode_return", "success": "charts/success"}
"""Per-epoch training metrics: the epoch's episodes on its training tasks, sampled actions (what
garage logs as Average/AverageReturn and SuccessRate)."""


def group_label(run_dir: Path) -> str:
    """'point-nav-s2-20261124-055323' -> 'point-nav'; 'pn-w5-s3' -> 'pn-w5'."""
    return re.sub(r"-s\d+(-\d{8}-\d{6})?$", "", run_dir.resolve().name)


@dataclass
class Run:
    label: str
    path: Path
    preset: str | None
    algo: str
    curve: tuple[np.ndarray, np.ndarray]  # env steps (P,), meta-test return (P,)
    success: tuple[np.ndarray, np.ndarray]  # env steps (P,), meta-test success rate (P,); empty if none
    adaptation: dict | None  # eval/<protocol>.json
    random: dict | None  # eval/<protocol>-random.json: a random policy on the same tasks
    oracle: dict | None = None  # eval/<protocol>-oracle.json: a goal-knowing agent, where the task has one
    config: dict = field(default_factory=dict)  # config.json
    others: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    """'training/return', 'training/success' (per epoch) and '<protocol>/return' or '/success' of the
    run's other during-training protocols: env steps (P,), values (P,)."""

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """'meta_test/return', 'meta_test/success' or one of `others` (empty where absent)."""
        found = {"meta_test/return": self.curve, "meta_test/success": self.success}.get(key) or self.others.get(key)
        return found if found is not None else (np.array([]), np.array([]))


def load_run(path: Path, protocol: str) -> Run:
    run = RunDir(path)
    if not run.metrics.is_file():
        raise CheckpointError(f"{path} is not a run directory (no metrics.jsonl)")
    records = read_metrics(path)
    curves: dict[str, tuple[list[int], list[float]]] = {"return": ([], []), "success": ([], [])}
    others: dict[str, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    for record in records:
        for metric, (steps, values) in curves.items():
            episodes = [v for k, v in record.items() if (m := META_TEST.fullmatch(k)) and m.group(2) == metric]
            if episodes:
                steps.append(_measured_at(record))
                values.append(float(np.mean(episodes)))
        for key, value in record.items():
            if (m := OTHER_PROTOCOL.fullmatch(key)) and not META_TEST.fullmatch(key) and value is not None:
                others[f"{m.group(1)}/{m.group(2)}"][0].append(_measured_at(record))
                others[f"{m.group(1)}/{m.group(2)}"][1].append(float(value))
        for metric, key in TRAINING.items():
            if record.get(key) is not None:  # logged after the epoch whose episodes it averages
                others[f"training/{metric}"][0].append(record["charts/env_steps"])
                others[f"training/{metric}"][1].append(float(record[key]))
    read = lambda file: read_json(file) if file.is_file() else None  # noqa: E731
    config = read(run.config) or {}
    algo = config.get("algo", "trmrl")
    return Run(f"{algo}: {group_label(path)}", path, config.get("preset"), algo,
               *((np.array(steps), np.array(values)) for steps, values in curves.values()),
               read(run.eval_result(protocol)), read(run.eval_result(f"{protocol}-random")),
               read(run.eval_result(f"{protocol}-oracle")), config,
               {key: (np.array(steps), np.array(values)) for key, (steps, values) in others.items()})


def _measured_at(record: dict) -> int:
    """Env steps the agent had seen when a meta-test record was measured. Meta-tests have their own
    records at those steps; runs written before that shared the epoch's training record, logged
    one epoch later, and ran before that epoch's sampling."""
    if "time/update" not in record:
        return record["charts/env_steps"]
    return record["charts/env_steps"] // (record["epoch"] + 1) * record["epoch"]


MIN_RUNS_FOR_INTERVAL = 3
"""Fewer runs than this get no band: a bootstrap over two runs is only their min-max range."""


def _band(ax, x: np.ndarray, stats: list[Aggregate], which: str, label: str, color: str, n_runs: int) -> None:
    """The curve, and its confidence band where there are enough runs to resample."""
    centre = np.array([getattr(s, which) for s in stats])
    ax.plot(x, centre, color=color, label=label, marker="o" if len(x) < 12 else None)
    if n_runs >= MIN_RUNS_FOR_INTERVAL:
        ci = np.array([getattr(s, f"{which}_ci") for s in stats])
        ax.fill_between(x, ci[:, 0], ci[:, 1], color=color, alpha=0.2, linewidth=0)


@dataclass(frozen=True)
class Style:
    """How figures look: their size in inches, the statistics drawn (one panel each: 'mean',
    'iqm'), and which learning-curve quantities ('meta-test', 'training', 'protocols')."""

    size: tuple[float, float] | None = None
    """(width, height); None: 5.5 x 4 per panel."""
    statistics: tuple[str, ...] = ("mean", "iqm")
    curves: tuple[str, ...] = ("meta-test", "training", "protocols")


def _figure(title: str, xlabel: str, groups: dict[str, tuple[np.ndarray, list[Aggregate], int]], out: Path, name: str,
            floor: np.ndarray | None = None, references: Sequence[Reference] = (),
            ylabel: str = "meta-test return", ceiling: np.ndarray | None = None,
            resampled: str = "runs", integer_x: bool = False, style: Style = Style()) -> list[Path]:
    """A panel per statistic of `style` (mean, IQM); `resampled` says what the 95% bootstrap
    bands resample; `integer_x` for an axis of episode indices (no 0.5 ticks)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = style.statistics
    fig, axes = plt.subplots(1, len(panels), figsize=style.size or (5.5 * len(panels), 4), sharey=True, squeeze=False)
    axes = axes[0]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, (x, stats, n_runs)) in enumerate(sorted(groups.items())):
        for ax, which in zip(axes, panels):
            runs = (f"{n_runs} runs" if n_runs >= MIN_RUNS_FOR_INTERVAL
                    else f"{n_runs} run{'s' if n_runs > 1 else ''}: too few for an interval")
            _band(ax, x, stats, which, f"{label} ({runs})", colors[i % len(colors)], n_runs)
    for line, style, label in ((floor, "--", "random policy"), (ceiling, ":", "oracle (knows the goal)")):
        if line is not None:
            for ax in axes:
                ax.plot(np.arange(len(line)), line, color="grey", linestyle=style, label=label)
    right = None
    if references and groups:
        # the paper's curves run to 1e7-5e7 steps: keep the runs' range, and the paper's first point
        left = min(float(x[0]) for x, _, _ in groups.values())
        right = max(max(float(x[-1]) for x, _, _ in groups.values()), min(r.x[0] for r in references))
        for ax in axes:
            ax.set_xlim(left - 0.04 * (right - left), right + 0.04 * (right - left))
    for reference, style in zip(references, itertools.cycle(("-", ":", "-.", "--"))):
        for ax in axes:
            ax.plot(reference.x, reference.y, color="black", linestyle=style, marker="s", markersize=4,
                    label=reference_label(reference, None if right is None else right * 1.04))
    for ax, which in zip(axes, ({"mean": "Mean", "iqm": "IQM"}[p] for p in panels)):
        ax.set_title(f"{which}\n95% bootstrap CI over {resampled} ({MIN_RUNS_FOR_INTERVAL}+ runs)", fontsize=9)
        if integer_x:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        else:
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(ylabel)
    handles, labels = axes[0].get_legend_handles_labels()
    if len(labels) > 5 or max(map(len, labels), default=0) > 60:
        # a long or wide legend would cover the curves and run into the next panel: below them
        fig.legend(handles, labels, fontsize=8, loc="upper center", ncol=min(2, len(panels)),
                   bbox_to_anchor=(0.5, 0.0))
    else:
        axes[0].legend(fontsize=8)
    fig.suptitle(title, y=1.04)  # above the two-line panel titles
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.svg"]
    for path in paths:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return paths


def learning_curves(runs: list[Run], metric: str = "curve", suffix: str = ""
                    ) -> dict[str, tuple[np.ndarray, list[Aggregate], int]]:
    """Per group (its label + `suffix`): env steps at which every run has a value, and the
    aggregate over runs of `metric` ('curve': the meta-test return; 'success': the meta-test
    success rate; or a `Run.series` key such as 'training/return')."""
    key = {"curve": "meta_test/return", "success": "meta_test/success"}.get(metric, metric)
    groups: dict[str, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    for run in runs:
        if len(run.series(key)[0]):
            groups[run.label + suffix].append(run.series(key))
    out = {}
    for label, members in groups.items():
        common = sorted(set.intersection(*(set(steps.tolist()) for steps, _ in members)))
        if not common:
            continue
        scores = np.array([[dict(zip(steps.tolist(), values))[x] for x in common] for steps, values in members])
        out[label] = (np.array(common), [aggregate(scores[:, j, None]) for j in range(len(common))], len(members))
    return out


def quantity_curves(runs: list[Run], metric: str, which: Sequence[str] = Style.curves
                    ) -> dict[str, tuple[np.ndarray, list[Aggregate], int]]:
    """Every quantity of `metric` ('return' or 'success') the runs logged, each its own curve: the
    during-training meta-test on held-out tasks ('meta-test'), the training episodes ('training';
    the paper's MuJoCo curves plot this one, docs/cheetah-vel.md), and the run's other protocols
    ('protocols', `eval.also`)."""
    mode = {"mean" if run.config.get("eval", {}).get("deterministic", True) else "sampled" for run in runs}
    keys = {key for run in runs for key in run.others if key.endswith(f"/{metric}") and not key.startswith("training/")}
    curves = {}
    if "meta-test" in which:
        curves |= learning_curves(runs, f"meta_test/{metric}", f" · held-out meta-test, {'/'.join(sorted(mode))} actions")
    if "training" in which:
        curves |= learning_curves(runs, f"training/{metric}", " · training episodes, sampled actions")
    for key in sorted(keys) if "protocols" in which else ():
        curves |= learning_curves(runs, key, f" · {key.split('/')[0]} protocol")
    return curves


def _adaptation_groups(runs: list[Run]) -> dict[str, list[dict]]:
    """Each group's eval results (runs without one left out)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        if run.adaptation is not None:
            groups[run.label].append(run.adaptation)
    return groups


def adaptation_curves(runs: list[Run]) -> dict[str, tuple[np.ndarray, list[Aggregate], int]]:
    """Per group and episode index: (runs, tasks) scores, stratified by task when every run was
    evaluated on the same tasks, else one score (the mean over tasks) per run."""
    groups = _adaptation_groups(runs)
    out = {}
    for label, results in groups.items():
        episodes = min(r["episodes"] for r in results)
        returns = [np.array(r["returns"], dtype=float)[:, :episodes] for r in results]
        same_tasks = all(r["tasks"] == results[0]["tasks"] for r in results)
        stats = []
        for k in range(episodes):
            if same_tasks:
                scores = np.stack([r[:, k] for r in returns])
            else:
                scores = np.array([[np.nanmean(r[:, k])] for r in returns])
            stats.append(aggregate(scores))
        out[label] = (np.arange(episodes), stats, len(results))
    return out


def evaluation_score(result: dict, episodes: int) -> np.ndarray:
    """A result's score per task: its return averaged over the evaluation episodes (those after the
    protocol's adaptation episodes, among the first `episodes` of each trial) of all its trials."""
    returns = np.array(result["returns"], dtype=float)
    per_trial, adapting = result["episodes"], result.get("adaptation_episodes", 0)
    kept = [t * per_trial + k for t in range(returns.shape[1] // per_trial)
            for k in range(adapting, min(per_trial, episodes))]
    return np.nanmean(returns[:, kept], axis=1)


def improvement_table(runs: list[Run], out: Path) -> list[Path]:
    """For every ordered pair of groups evaluated on the same held-out tasks: the probability that
    a run of the first beats a run of the second on a task (`evaluation_score`: its return over
    the evaluation episodes of its trials), with a 95% CI over runs resampled within tasks; written
    to out/probability_of_improvement.csv. Nothing for fewer than two groups or differing tasks."""
    groups = _adaptation_groups(runs)
    results = [r for members in groups.values() for r in members]
    if len(groups) < 2 or any(r["tasks"] != results[0]["tasks"] for r in results):
        return []
    episodes = min(r["episodes"] for r in results)
    scores = {label: np.stack([evaluation_score(r, episodes) for r in members]) for label, members in groups.items()}
    path = out / "probability_of_improvement.csv"
    out.mkdir(parents=True, exist_ok=True)
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["x", "y", "p_x_beats_y", "ci_low", "ci_high", "runs_x", "runs_y", "tasks"])
    for a, b in itertools.permutations(sorted(scores), 2):
        p, (low, high) = probability_of_improvement(scores[a], scores[b])
        if min(len(scores[a]), len(scores[b])) < MIN_RUNS_FOR_INTERVAL:  # no interval over runs to speak of
            low = high = float("nan")
        writer.writerow([a, b, f"{p:.3f}", f"{low:.3f}", f"{high:.3f}", len(scores[a]), len(scores[b]),
                         scores[a].shape[1]])
    write_text(path, table.getvalue())
    return [path]


def bound(runs: list[Run], which: str = "random") -> np.ndarray | None:
    """Mean return per episode index of the random policy (or the oracle) beside the runs'
    meta-tests."""
    results = [np.array(getattr(r, which)["returns"], dtype=float) for r in runs if getattr(r, which) is not None]
    if not results:
        return None
    episodes = min(r.shape[1] for r in results)
    return np.nanmean(np.concatenate([r[:, :episodes] for r in results]), axis=0)


def shared_preset(runs: Sequence[Run]) -> str | None:
    """The preset every run started from and whose task distribution it trained on, or None (then
    no paper reference fits them all: e.g. a task distribution of your own on point-nav's settings)."""
    from trmrl.presets import PRESETS

    presets = {run.preset for run in runs}
    preset = presets.pop() if len(presets) == 1 else None
    if preset not in PRESETS or any(run.config.get("task", {}).get("name") != PRESETS[preset][1].task.name
                                    for run in runs):
        return None
    return preset


NOT_CONFIG = ("seed", "run_dir", "progress", "torch_threads", "total_env_steps", "checkpoint_every",
              "eval.every_epochs", "eval.same_tasks", "device", "dist_timeout", "imports", "track", "ppo.compile")
"""Fields that do not make two runs different experiments (a longer budget extends one; learning
curves are drawn where all runs of a group have points; a compiled update is the eager one's
arithmetic at float rounding)."""


def _flat(config: dict) -> dict[str, object]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in flatten(_current(config)).items()
            if k not in NOT_CONFIG}


def _current(config: dict) -> dict:
    """A config.json as today's code reads it back (other algorithms' sections of an older
    layout dropped, fields added since at their defaults), so runs of one experiment written
    before and after a layout change compare equal; as written where it does not read back."""
    from trmrl.algos import load_config
    from trmrl.config import to_dict

    try:
        return {"algo": config.get("algo", "trmrl")} | to_dict(load_config(config))
    except (ConfigError, TypeError, ValueError, KeyError):
        return config


def split_mixed_groups(runs: list[Run]) -> list[Run]:
    """Runs grouped by directory name whose configs differ (other than in the seed) are drawn as
    separate curves labelled by what differs, with a warning: a curve is one experiment."""
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        groups[run.label].append(run)
    for label, members in groups.items():
        configs = [_flat(run.config) for run in members]
        differ = sorted(k for k in set().union(*configs) if len({repr(c.get(k)) for c in configs}) > 1)
        if not differ:
            continue
        warn(f"the runs grouped as '{label}' differ in {', '.join(differ)}: drawn as separate curves")
        for run, config in zip(members, configs):
            run.label = f"{label} ({', '.join(f'{k}={config.get(k)}' for k in differ[:3])})"
    return runs


def reference_label(reference: Reference, right: float | None) -> str:
    """The legend entry of one of the paper's curves; where the axis ends before its last point
    (short runs keep their own range), it says how far the curve goes and where it ends."""
    label = f"paper: {reference.label}"
    hidden = [x for x in reference.x if right is not None and x > right]
    if hidden:
        label += f" (to {reference.x[-1]:.2g} steps: {reference.y[-1]:g}, {len(hidden)} point(s) off the axis)"
    return label


def plot_runs(run_dirs: list[Path], out: Path, protocol: str = "adaptation", paper: bool = True,
              style: Style = Style()) -> list[Path]:
    """Learning and adaptation figures of the runs; with `paper`, the paper's points for their
    preset beside them (when all runs share a preset the paper reports)."""
    runs = split_mixed_groups([load_run(path, protocol) for path in run_dirs])
    tasks = defaultdict(list)  # returns of different task distributions are not on one scale
    for run in runs:
        tasks[run.config.get("task", {}).get("name", "?")].append(run.path.name)
    if len(tasks) > 1:
        raise ConfigError("runs of different task distributions cannot share an axis: "
                          + "; ".join(f"{name}: {', '.join(paths)}" for name, paths in sorted(tasks.items()))
                          + " (plot each distribution's runs separately)")
    preset = shared_preset(runs) if paper else None
    algos = sorted({run.algo for run in runs})  # the paper's points of every algorithm plotted
    paths: list[Path] = []
    for metric, name, title in (("return", "learning_curves", "return per episode"),
                                ("success", "success_curves", "success rate per episode")):
        curves = quantity_curves(runs, metric, style.curves)
        if curves:
            paths += _figure(f"Meta-training: {title} (the label says which quantity each curve is)",
                             "environment steps", curves, out, name,
                             references=[r for a in algos for r in learning_references(preset, metric, a)],
                             ylabel=title, style=style)
    adaptation = adaptation_curves(runs)
    if adaptation:
        kind = next((run.adaptation["protocol"] for run in runs if run.adaptation), protocol)  # the file's protocol
        references = [r for a in algos if (r := adaptation_reference(preset, kind, a))]
        paths += _figure(f"Fast adaptation ({protocol}): return per episode of a trial on held-out tasks",
                         "episode index within the trial", adaptation, out, "adaptation_curves", bound(runs),
                         references=references, ceiling=bound(runs, "oracle"),
                         resampled="runs, within each held-out task", integer_x=True, style=style)
        paths += improvement_table(runs, out)
    if not paths:
        raise ConfigError("nothing to plot: no meta-test in metrics.jsonl and no eval/"
                          f"{protocol}.json in the given runs")
    return paths
