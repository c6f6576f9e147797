"""The house: a run holds one algorithm's config, the command line shows and accepts only that
algorithm's options, old run directories still load, a sixth algorithm is one module, and the
package's import graph has no circle."""

import ast
import contextlib
import dataclasses
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trmrl.algos import ALGORITHMS, config_class, load_config, make_config, with_algorithm
from trmrl.cli import main
from trmrl.config import TrainConfig, sections, to_dict
from trmrl.errors import ConfigError
from trmrl.presets import ALGO_PRESETS, PRESETS

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {name: set(sections(config_class(name)())) for name in ALGORITHMS}


def help_text(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main(["train", *args, "--help"])
    assert exit_info.value.code == 0
    return out.getvalue()


@pytest.mark.parametrize("algo", list(ALGORITHMS))
def test_help_lists_the_run_settings_and_this_algorithms_sections_only(algo):
    text = help_text("point-nav", "--algo", algo)
    shown = set(re.findall(r"--(\w+)\.[\w-]+", text)) - {"task", "eval"}
    assert shown == SECTIONS[algo], (algo, shown)
    assert "--seed" in text and "--task.max-episode-steps" in text and "--eval.n-tasks" in text


def test_an_option_of_another_algorithm_is_refused_in_one_line(capsys):
    assert main(["train", "point-nav", "--pearl.latent-size", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--pearl.latent-size is an option of pearl, not of this run's algorithm 'trmrl'" in err[0]
    assert main(["train", "point-nav", "--algo", "maml", "--model.window", "3"]) == 2
    assert "--model.window is an option of trmrl, not of this run's algorithm 'maml'" in capsys.readouterr().err
    config = PRESETS["point-nav"][1]
    with pytest.raises(ConfigError, match="pearl: not a run setting nor a section of the 'trmrl'"):
        dataclasses.replace(config, pearl=config_class("pearl")().pearl)
    with pytest.raises(ConfigError, match="model: not a run setting nor a section of the 'maml'"):
        make_config("maml", model=config.model)
    with pytest.raises(AttributeError, match="'rl2' is neither a run setting nor a section of the 'trmrl'"):
        config.rl2  # noqa: B018


def every_preset() -> list[TrainConfig]:
    return [config for _, config in PRESETS.values()] + [config for _, config in ALGO_PRESETS.values()]


def test_config_json_holds_one_algorithm_and_reads_back_as_written():
    for config in every_preset():
        written = json.loads(json.dumps(to_dict(config)))
        assert written["algo"] == config.algo
        assert set(written) & set().union(*SECTIONS.values()) == SECTIONS[config.algo]
        assert load_config(written) == config


def test_run_directories_written_when_every_run_held_every_section_still_load():
    # config.json before a run held one algorithm's config: all five sections and PPO's, whatever the algorithm
    for config in every_preset():
        legacy = to_dict(config)
        for name in ALGORITHMS:
            for section, value in to_dict(config_class(name)()).items():
                legacy.setdefault(section, value)
        assert load_config(legacy) == config
    assert load_config({k: v for k, v in to_dict(PRESETS["point-nav"][1]).items() if k != "algo"}).algo == "trmrl"
    with pytest.raises(ConfigError, match="unknown config field"):  # a new-style file with a stray section
        load_config({**to_dict(PRESETS["point-nav"][1]), "pearl": to_dict(config_class("pearl")())["pearl"]})


def test_another_algorithm_on_a_preset_keeps_its_run_settings_and_shared_sections():
    base = PRESETS["cheetah-vel"][1]
    rl2 = with_algorithm(base, "rl2", rl2={"hidden_size": 32})
    assert (rl2.algo, rl2.task, rl2.eval, rl2.total_env_steps) == ("rl2", base.task, base.eval, base.total_env_steps)
    assert rl2.ppo == base.ppo and rl2.rl2.hidden_size == 32
    maml = with_algorithm(base, "maml")
    assert sections(maml.agent) == ("maml",) and maml.steps_per_epoch == 20 * (20 * 2) * 200  # tasks x episodes before and after the inner step x H


def test_a_sixth_algorithm_is_one_module_and_one_registry_line(tmp_path):
    """The example of docs/architecture.md, run as shown: registered, trained, meta-tested."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "architecture.md").read_text(), flags=re.S)
    (code,) = [b for b in blocks if "algos.register(" in b]
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    returns = json.loads((tmp_path / "runs" / "cem" / "eval" / "adaptation.json").read_text())["returns"]
    random = json.loads((tmp_path / "runs" / "cem" / "eval" / "adaptation-random.json").read_text())["returns"]
    mean = lambda rows: sum(map(sum, rows)) / sum(map(len, rows))  # noqa: E731
    assert mean(returns) > mean(random) + 2  # three epochs of CEM find a better constant action than chance
    written = json.loads((tmp_path / "runs" / "cem" / "config.json").read_text())
    assert written["algo"] == "cem" and written["cem"] == {"population": 6, "elite": 2} and "model" not in written


def imports(path: Path) -> set[str]:
    """trmrl modules a file imports anywhere (functions included), except for type checking."""
    tree = ast.parse(path.read_text())
    hidden = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
              for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("trmrl"):
            # `from trmrl import checkpoint` imports the submodule; the package itself is already loaded
            found |= {*(f"{node.module}.{a.name}" for a in node.names), *([node.module] if node.module != "trmrl" else [])}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("trmrl")}
    return found


def test_the_import_graph_has_no_circle():
    files = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (ROOT / "trmrl").rglob("*.py")}
    edges = {m: {t for t in imports(p) if t in files and t != m} for m, p in files.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges[module]):
            assert state.get(target) != 1, " -> ".join([*path, module, target])
            if target not in state:
                visit(target, [*path, module])
        state[module] = 2

    for module in sorted(files):
        if module not in state:
            visit(module, [])
