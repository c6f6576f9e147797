"""`trmrl sweep`: a 2-cell x 2-seed grid runs, survives a failing cell, resumes after a kill, skips
finished runs, and its table is the runs' own result files."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from trmrl.errors import ConfigError
from trmrl.stats import aggregate
from trmrl.sweep import Cell, parse_cell, parse_grid

TINY = ["--total-env-steps", "640", "--task.tasks-per-epoch", "8", "--task.max-episode-steps", "5",
        "--model.d-model", "16", "--model.n-heads", "2", "--model.d-ff", "32", "--ppo.minibatch-size", "32",
        "--eval.every-epochs", "2", "--eval.n-tasks", "4", "--eval.final-n-tasks", "4", "--eval.final-episodes", "2",
        "--checkpoint-every", "1"]


def sweep(*args, out, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "trmrl", "sweep", "point-nav", *args, "--out", str(out), *TINY],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs)


def test_grid_names_flags_and_baseline():
    cells = parse_grid(["model.window=1,5", "model.share-network=true,false"])
    assert [c.name for c in cells] == ["window-1_share-network-true", "window-1_share-network-false",
                                       "window-5_share-network-true", "window-5_share-network-false"]
    assert cells[1].flags() == ["--model.window", "1", "--model.no-share-network"]
    assert parse_cell("model.window=5;model.share_network=false", cells) == cells[3]
    with pytest.raises(ConfigError, match="names 2 cells"):
        parse_cell("model.window=5", cells)
    with pytest.raises(ConfigError, match="FIELD=V1,V2"):
        parse_grid(["model.window"])
    assert Cell(()).name == "base"


def test_a_grid_runs_survives_a_failing_cell_resumes_after_a_kill_and_tables_its_runs(tmp_path):
    out = tmp_path / "sweep"
    grid = ["--grid", "model.window=1,3", "--seeds", "1", "2", "--jobs", "1", "--threads", "1",
            "--baseline", "model.window=3"]
    # killed (with its run) while the first run is under way: that run has a checkpoint, no result
    first = out / "runs" / "window-1-s1"
    killed = sweep(*grid, out=out)
    while not (first / "checkpoint.pt").exists():
        assert killed.poll() is None, killed.communicate()
        time.sleep(0.2)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert not (first / "eval" / "adaptation.json").exists()

    done = sweep(*grid, out=out)
    stdout, stderr = done.communicate(timeout=600)
    assert done.returncode == 0, stderr
    runs = {d.name for d in (out / "runs").iterdir() if d.is_dir()}
    assert runs == {"window-1-s1", "window-1-s2", "window-3-s1", "window-3-s2"}
    # the killed run was resumed, not restarted: its metrics run once through every epoch
    epochs = [json.loads(line)["epoch"] for line in (first / "metrics.jsonl").read_text().splitlines()
              if "time/update" in json.loads(line)]
    assert epochs == sorted(set(epochs)) and len(epochs) == 8

    # the table is the runs' own result files: mean over seeds of each run's mean over tasks and episodes
    rows = {row["cell"]: row for row in csv.DictReader((out / "table.csv").open())}
    for window in (1, 3):
        scores = np.stack([np.array(json.loads((out / "runs" / f"window-{window}-s{s}" / "eval" / "adaptation.json")
                                               .read_text())["returns"]).mean(axis=1) for s in (1, 2)])
        row = rows[f"model.window={window}"]
        assert int(row["runs"]) == 2 and float(row["mean"]) == pytest.approx(aggregate(scores).mean, abs=1e-4)
    assert rows["model.window=1"]["p_beats_baseline"] and not rows["model.window=3"]["p_beats_baseline"]
    # and by episode of the trial: episode k's mean over seeds and tasks
    by_episode = np.stack([np.array(json.loads((out / "runs" / f"window-3-s{s}" / "eval" / "adaptation.json")
                                               .read_text())["returns"]) for s in (1, 2)])  # (seeds, tasks, episodes)
    line = next(x for x in (out / "table.md").read_text().split("By episode")[1].splitlines()
                if x.startswith("| model.window=3 |"))
    assert [float(c.split(" [")[0]) for c in line.split(" | ")[1:]] == pytest.approx(
        list(by_episode.mean(axis=(0, 1))), abs=0.006)
    assert (out / "plots" / "learning_curves.png").is_file() and (out / "plots" / "adaptation_curves.png").is_file()

    # run again: everything finished is skipped; a cell that cannot run is reported, the others complete
    before = {p: p.stat().st_mtime for p in (out / "runs").glob("*/metrics.jsonl")}
    again = sweep("--grid", "model.window=1,0", "--seeds", "1", "--jobs", "2", "--threads", "1", out=out)
    stdout, stderr = again.communicate(timeout=600)
    assert again.returncode == 2 and "window-1-s1: finished, skipped" in stdout
    assert "window-0-s1: FAILED: trmrl: error: " in stdout and "model.window must be >= 1" in stdout
    assert stderr.strip().startswith("trmrl: error: 1 run(s) failed: window-0-s1") and len(stderr.strip().splitlines()) == 1
    assert {p: p.stat().st_mtime for p in (out / "runs").glob("*/metrics.jsonl")} == before
    assert "| model.window=0 | 0 | (no finished run) |" in (out / "table.md").read_text()
