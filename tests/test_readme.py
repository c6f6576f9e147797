"""The README's custom task distribution example runs as shown and meta-tests on held-out goals."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (code,) = [b for b in blocks if "tasks.register(" in b]
    return code


def test_the_custom_distribution_example_runs_as_shown(tmp_path):
    code = example()
    assert len(code.splitlines()) <= 40
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "meta-test return per episode:" in result.stdout
    run = tmp_path / "runs" / "ring-goals"
    assert json.loads((run / "config.json").read_text())["task"]["name"] == "ring-goals"
    held_out = np.random.default_rng(0).permutation(np.linspace(0, 2 * np.pi, 60, endpoint=False))[50:]
    goals = {(round(float(np.cos(a)), 6), round(float(np.sin(a)), 6)) for a in held_out}
    tested = json.loads((run / "eval" / "adaptation.json").read_text())["tasks"]
    assert tested and all((round(x, 6), round(y, 6)) in goals for x, y in (t["params"] for t in tested))
