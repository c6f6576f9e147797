"""`trmrl sweep`: a grid of overrides x seeds, run in parallel, resumable, ending in one table and one
figure (the paper's ablations, seed sweeps).

    trmrl sweep point-nav --grid model.window=1,5,25 --seeds 1 2 3 --baseline model.window=5

Each cell x seed is one run directory, OUT/runs/<cell>-s<seed>, started with `trmrl train` in a
process of its own (`--jobs` at a time, `--threads` torch threads each; its log beside it). A
finished run (its final result written) is skipped, an interrupted one (a checkpoint) is resumed,
a failed one is reported and the rest go on. At the end: OUT/table.csv and table.md (per cell:
the final protocol's return with a 95% bootstrap CI over seeds, and the probability that a run of
the cell beats a run of the baseline cell on a held-out task) and OUT/plots (`trmrl plot` of
every run: learning and adaptation curves per cell). On a cluster, one cell x seed per job with
`--only CELL-sSEED` (a Slurm array: docs/guide.md), then `trmrl sweep ... --report` once.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trmrl.errors import ConfigError
from trmrl.rundir import RunDir, write_text
from trmrl.stats import aggregate, probability_of_improvement

RESULT = "adaptation"
"""The final protocol whose result file marks a finished run and fills the table."""


@dataclass(frozen=True)
class Cell:
    """One point of the grid: its overrides, in the grid's order."""

    overrides: tuple[tuple[str, str], ...]

    @property
    def name(self) -> str:
        """'window-5_n-layers-4': the last part of each field and its value (the run directories' name)."""
        return "_".join(f"{key.rpartition('.')[2].replace('_', '-')}-{value}" for key, value in self.overrides) or "base"

    @property
    def label(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self.overrides) or "(preset)"

    def flags(self) -> list[str]:
        """Command-line flags: `--model.window 5`; a boolean as `--model.x` / `--model.no-x`."""
        out: list[str] = []
        for key, value in self.overrides:
            head, dot, last = key.replace("_", "-").rpartition(".")
            if value.lower() in ("true", "false"):
                out.append(f"--{head}{dot}{'' if value.lower() == 'true' else 'no-'}{last}")
            else:
                out += [f"--{head}{dot}{last}", value]
        return out


def parse_grid(specs: list[str]) -> list[Cell]:
    """['model.window=1,5', 'model.n_layers=1,4'] -> the 4 cells of their product."""
    axes = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not key or not values:
            raise ConfigError(f"--grid {spec}: write FIELD=V1,V2,... (e.g. model.window=1,5,25)")
        axes.append([(key.strip().replace("-", "_"), v.strip()) for v in values.split(",") if v.strip()])
    return [Cell(tuple(combo)) for combo in itertools.product(*axes)]


def parse_cell(spec: str, cells: list[Cell]) -> Cell:
    """The cell a `--baseline model.window=5[,...]` names."""
    wanted = {(k.strip().replace("-", "_"), v.strip()) for k, _, v in (part.partition("=") for part in spec.split(";"))}
    found = [cell for cell in cells if wanted <= set(cell.overrides)]
    if len(found) != 1:
        raise ConfigError(f"--baseline {spec} names {len(found)} cells of the grid; name exactly one "
                          f"({'; '.join(cell.label for cell in cells)})")
    return found[0]


@dataclass
class Job:
    cell: Cell
    seed: int
    run_dir: Path

    @property
    def name(self) -> str:
        return self.run_dir.name

    def finished(self) -> bool:
        return RunDir(self.run_dir).eval_result(RESULT).is_file()

    def command(self, preset: str, extra: list[str], threads: int) -> list[str]:
        trmrl = [sys.executable, "-m", "trmrl"]
        if RunDir(self.run_dir).checkpoint.is_file():  # interrupted: go on from its checkpoint
            return [*trmrl, "train", "--resume", str(self.run_dir), "--torch-threads", str(threads), "--no-progress"]
        return [*trmrl, "train", preset, *self.cell.flags(), *extra, "--seed", str(self.seed),
                "--run-dir", str(self.run_dir), "--torch-threads", str(threads), "--no-progress"]


def run_job(job: Job, preset: str, extra: list[str], threads: int) -> tuple[Job, int, str]:
    """Run one job to its end; (job, exit code, its last error line)."""
    log = job.run_dir.with_name(job.name + ".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        code = subprocess.run(job.command(preset, extra, threads), stdout=out, stderr=subprocess.STDOUT).returncode
    lines = [line for line in log.read_text().splitlines() if line.startswith("trmrl: error:")]
    return job, code, lines[-1] if lines else f"exit code {code} (see {log})"


def default_jobs() -> int:
    """One job per two cores: torch runs of two threads side by side slow each other far more."""
    return max(1, (os.cpu_count() or 2) // 2)


def sweep(preset: str, grid: list[str], seeds: list[int], out: Path, jobs: int, threads: int, extra: list[str],
          baseline: str | None = None, only: str | None = None, report_only: bool = False,
          echo=print) -> list[Path]:
    """Run the grid (skipping finished runs, resuming interrupted ones), then write the table
    and the figures; returns the files written."""
    cells = parse_grid(grid)
    if not seeds:
        raise ConfigError("--seeds takes at least one seed")
    base = parse_cell(baseline, cells) if baseline else None
    all_jobs = [Job(cell, seed, out / "runs" / f"{cell.name}-s{seed}") for cell in cells for seed in seeds]
    if only is not None:
        chosen = [job for job in all_jobs if job.name == only]
        if not chosen:
            raise ConfigError(f"--only {only}: not a run of this grid ({', '.join(j.name for j in all_jobs)})")
    else:
        chosen = all_jobs
    failed: list[tuple[Job, str]] = []
    if not report_only:
        todo = [job for job in chosen if not job.finished()]
        for job in chosen:
            if job.finished():
                echo(f"[sweep] {job.name}: finished, skipped")
        echo(f"[sweep] {len(todo)} run(s) to go, {jobs} at a time, {threads} torch thread(s) each")
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            for job, code, error in pool.map(lambda j: run_job(j, preset, extra, threads), todo):
                if code == 0:
                    echo(f"[sweep] {job.name}: done ({time.monotonic() - started:.0f} s into the sweep)")
                else:
                    failed.append((job, error))
                    echo(f"[sweep] {job.name}: FAILED: {error}")
        if only is not None:
            return []
    paths = report(cells, all_jobs, out, base, echo)
    if failed:
        raise ConfigError(f"{len(failed)} run(s) failed: " + "; ".join(f"{job.name} ({error})" for job, error in failed)
                          + f"; the others are in {out / 'table.md'}")
    return paths


def _scores(job: Job) -> tuple[np.ndarray, list] | None:
    """A finished run's return per held-out task and evaluation episode (tasks, episodes), and
    the tasks."""
    if not job.finished():
        return None
    result = json.loads(RunDir(job.run_dir).eval_result(RESULT).read_text())
    return np.array(result["returns"], dtype=float)[:, result.get("adaptation_episodes", 0):], result["tasks"]


def _per_episode_table(rows: list[dict], by_episode: dict[str, np.ndarray]) -> str:
    """Markdown: per cell, the return of each evaluation episode, mean [95% CI over seeds]."""
    episodes = max((scores.shape[2] for scores in by_episode.values()), default=0)
    lines = ["| cell | " + " | ".join(f"episode {k}" for k in range(episodes)) + " |",
             "|---|" + "---|" * episodes]
    for row in rows:
        if row["cell"] not in by_episode:
            continue
        scores = by_episode[row["cell"]]  # (runs, tasks, episodes)
        cells = []
        for k in range(episodes):
            if k >= scores.shape[2]:
                cells.append("")
                continue
            stats = aggregate(scores[:, :, k])
            cells.append(f"{stats.mean:.2f} [{stats.mean_ci[0]:.2f}, {stats.mean_ci[1]:.2f}]")
        lines.append(f"| {row['cell']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def report(cells: list[Cell], jobs: list[Job], out: Path, baseline: Cell | None, echo=print) -> list[Path]:
    """table.csv, table.md and plots/ from the runs' own result files."""
    from trmrl.plot import plot_runs

    rows = []
    by_cell: dict[Cell, np.ndarray] = {}
    by_episode: dict[str, np.ndarray] = {}
    for cell in cells:
        found = [s for job in jobs if job.cell == cell and (s := _scores(job)) is not None]
        if not found:
            rows.append({"cell": cell.label, "runs": 0})
            continue
        by_episode[cell.label] = np.stack([s for s, _ in found])  # (runs, tasks, episodes)
        scores = np.nanmean(by_episode[cell.label], axis=2)  # (runs, tasks): mean over the episodes
        by_cell[cell] = scores
        stats = aggregate(scores)
        per_run = scores.mean(axis=1)
        rows.append({"cell": cell.label, "runs": len(found), "mean": stats.mean, "ci_low": stats.mean_ci[0],
                     "ci_high": stats.mean_ci[1], "per_seed": " ".join(f"{v:.2f}" for v in per_run)})
    if baseline is not None and baseline in by_cell:
        for row, cell in zip(rows, cells):
            if cell in by_cell and cell != baseline:
                p, (low, high) = probability_of_improvement(by_cell[cell], by_cell[baseline])
                row |= {"p_beats_baseline": p, "p_ci_low": low, "p_ci_high": high}
    fields = ["cell", "runs", "mean", "ci_low", "ci_high", "per_seed", "p_beats_baseline", "p_ci_low", "p_ci_high"]
    table = io.StringIO()
    writer = csv.DictWriter(table, fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "table.csv", table.getvalue())
    vs = f"P(beats {baseline.label})" if baseline is not None else ""
    lines = [f"| cell | runs | final return, mean [95% CI over seeds] | per seed |{f' {vs} [95% CI] |' if vs else ''}",
             "|---|---|---|---|" + ("---|" if vs else "")]
    for row in rows:
        if not row["runs"]:
            lines.append(f"| {row['cell']} | 0 | (no finished run) | |" + (" |" if vs else ""))
            continue
        line = f"| {row['cell']} | {row['runs']} | {row['mean']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}] | {row['per_seed']} |"
        if vs:
            line += (f" {row['p_beats_baseline']:.2f} [{row['p_ci_low']:.2f}, {row['p_ci_high']:.2f}] |"
                     if "p_beats_baseline" in row else " (baseline) |" if row["cell"] == baseline.label else " |")
        lines.append(line)
    text = "\n".join(lines) + "\n"
    write_text(out / "table.md", f"Final protocol '{RESULT}': return per episode on held-out tasks, mean over "
                                 f"each run's evaluation episodes and tasks; CIs: stratified bootstrap over seeds "
                                 f"within tasks.\n\n{text}\nBy episode of the trial:\n\n"
                                 f"{_per_episode_table(rows, by_episode)}")
    echo(text.rstrip())
    finished = [job.run_dir for job in jobs if job.finished()]
    paths = [out / "table.csv", out / "table.md"]
    if finished:
        paths += plot_runs(finished, out / "plots", RESULT)
    return paths
