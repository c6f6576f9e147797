"""The docs hold: the site builds with warnings as errors, the README's links lead somewhere, and
the custom task distribution example (docs/architecture.md) runs as shown and meta-tests on
held-out goals."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXAMPLE_PAGE = ROOT / "docs" / "architecture.md"


def test_the_docs_site_builds_with_warnings_as_errors(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "results" / "index.html").is_file()


def test_the_readme_is_a_front_door_whose_links_lead_somewhere():
    text = README.read_text()
    assert len(text.splitlines()) < 300
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert links and all((ROOT / link).exists() for link in links), [link for link in links if not (ROOT / link).exists()]


def test_the_custom_distribution_example_trains_evaluates_and_resumes_as_shown(tmp_path):
    """docs/architecture.md: the module as shown, then its three commands, each in a new process."""
    text = EXAMPLE_PAGE.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    (module,) = [b for b in blocks if 'tasks.register("ring-goals"' in b]
    (tmp_path / "ring_goals.py").write_text(module)
    commands = re.search(r"```bash\n(trmrl train point-nav --imports ring_goals.*?)```", text, flags=re.S).group(1)
    outputs = []
    for line in commands.strip().splitlines():
        args = line.split()
        assert args[0] == "trmrl"
        result = subprocess.run([sys.executable, "-m", "trmrl", *args[1:]], cwd=tmp_path, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, (line, result.stderr)
        outputs.append(result.stdout)
    run = tmp_path / "runs" / "ring-goals"
    config = json.loads((run / "config.json").read_text())
    assert config["task"]["name"] == "ring-goals" and config["imports"] == ["ring_goals"]
    held_out = np.random.default_rng(0).permutation(np.linspace(0, 2 * np.pi, 60, endpoint=False))[50:]
    goals = {(round(float(np.cos(a)), 6), round(float(np.sin(a)), 6)) for a in held_out}
    tested = json.loads((run / "eval" / "adaptation.json").read_text())["tasks"]
    assert tested and all((round(x, 6), round(y, 6)) in goals for x, y in (t["params"] for t in tested))
    assert "adaptation: 5 held-out tasks of ring-goals" in outputs[1]
    steps = [json.loads(line)["charts/env_steps"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) >= 12_800  # the resume went on to the new budget


def test_the_python_api_example_runs_as_shown(tmp_path):
    """docs/guide.md's "From Python" block, on a small trained run."""
    from conftest import tiny_config

    from trmrl.train import train

    train(tiny_config(total_env_steps=80), tmp_path / "run")
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "guide.md").read_text(), flags=re.S)
    (code,) = [b for b in blocks if 'Agent.load("RUN_DIR")' in b]
    result = subprocess.run([sys.executable, "-c", code.replace("RUN_DIR", str(tmp_path / "run"))], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    total, mean = map(float, result.stdout.split())
    assert total < 0 and mean < 0  # point-nav's rewards are minus distances
