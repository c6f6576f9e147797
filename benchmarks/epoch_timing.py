"""Per-epoch speed of a training run, from its metrics file, as a markdown table.

    python benchmarks/epoch_timing.py RUN_DIR [RUN_DIR ...]

Sampling steps/s counts environment steps collected per second of sampling (policy inference
and simulation); update samples/s counts the epoch's windows per second of the whole PPO update
(all policy and value passes). The first epoch is left out (start-up costs).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from trmrl.log import read_metrics
from trmrl.rundir import RunDir


def _epoch_steps(record: dict[str, float]) -> float:
    return record["charts/sampling_sps"] * record["time/sampling"]


def summarize(run_dir: Path) -> dict[str, float]:
    records = [r for r in read_metrics(run_dir) if "time/sampling" in r]  # training records, not meta-tests
    steady = records[1:] or records
    config = json.loads(RunDir(run_dir).config.read_text())
    median = lambda key: statistics.median(r[key] for r in steady)  # noqa: E731
    return {
        "run": run_dir.name,
        "preset": config["preset"],
        "epochs": len(records),
        "sampling s/epoch": median("time/sampling"),
        "update s/epoch": median("time/update"),
        "sampling steps/s": median("charts/sampling_sps"),
        "update samples/s": median("charts/update_samples_per_s"),
        "end-to-end steps/s": statistics.median(_epoch_steps(r) / (r["time/sampling"] + r["time/update"]) for r in steady),
    }


def main(paths: list[str]) -> None:
    rows = [summarize(Path(p)) for p in paths]
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.values()) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
