"""The meta-RL algorithms, one module each, behind one protocol (`trmrl.protocols.Algorithm`).

    trmrl train PRESET --algo NAME        (the preset's algorithm when omitted)
    trmrl algos                           lists them

An algorithm is built from the run's config and task distribution; it owns its networks,
optimisers and sampler, and builds its own training batch from a `Rollout`. Its module declares
its part of the run's config (`Config`, an `AlgorithmConfig`: its sections and budget
arithmetic) and whether it splits over processes (`data_parallel`). A sixth algorithm is one
module and one line in `ALGORITHMS` (docs/architecture.md shows one).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trmrl.config import AlgorithmConfig, TrainConfig, run_config_from_dict, sections
from trmrl.errors import ConfigError

if TYPE_CHECKING:
    from trmrl.protocols import Algorithm
    from trmrl.tasks import TaskDistribution

ALGORITHMS: dict[str, tuple[str, str]] = {
    # name: (one-line summary, "module:class")
    "trmrl": ("TrMRL: working-memory transformer (no LayerNorm, T-Fixup) + PPO over trials (Melo, ICML 2022)",
              "trmrl.algos.trmrl:TrMRL"),
    "rl2": ("RL^2: GRU/LSTM policy whose memory spans the trial + PPO with truncated BPTT (Duan et al. 2016)",
            "trmrl.algos.rl2:RL2"),
    "maml": ("MAML-TRPO: MLP policy adapted by policy-gradient steps, meta-trained with TRPO (Finn et al. 2017)",
             "trmrl.algos.maml:MAML"),
    "pearl": ("PEARL: soft actor-critic on a task posterior from a product-of-Gaussians context encoder (Rakelly et al. 2019)",
              "trmrl.algos.pearl:PEARL"),
    "varibad": ("VariBAD: PPO on a belief from a recurrent VAE encoder that reconstructs the trial's rewards (Zintgraf et al. 2020)",
                "trmrl.algos.varibad:VariBAD"),
}


def register(name: str, summary: str, target: str, *, replace: bool = False) -> None:
    """Make the algorithm class at `target` ("module:Class") available as `--algo name`."""
    if name in ALGORITHMS and not replace:
        raise ConfigError(f"algorithm '{name}' is already registered (pass replace=True to change it)")
    ALGORITHMS[name] = (summary, target)


def check_name(name: str) -> None:
    if name not in ALGORITHMS:
        from trmrl.plugins import load_entry_points

        if load_entry_points() and name in ALGORITHMS:
            return
        raise ConfigError(f"unknown algorithm '{name}'; choose from {', '.join(ALGORITHMS)}")


def algorithm_class(name: str) -> Any:
    check_name(name)
    module, _, cls = ALGORITHMS[name][1].partition(":")
    return getattr(importlib.import_module(module), cls)


def config_class(name: str) -> type[AlgorithmConfig]:
    """The algorithm's part of a run's config."""
    return algorithm_class(name).Config


def make_algorithm(config: TrainConfig, distribution: TaskDistribution) -> Algorithm:
    """The algorithm `config.algo`, built for `distribution`."""
    return algorithm_class(config.algo)(config, distribution)


def make_config(algo: str = "trmrl", **fields: Any) -> TrainConfig:
    """A run config of algorithm `algo`: run settings and that algorithm's sections by keyword,
    e.g. `make_config("rl2", seed=2, rl2=RL2Config(hidden_size=32))`; the rest at defaults."""
    return TrainConfig(agent=config_class(algo)(), **fields)


def with_algorithm(config: TrainConfig, name: str, **changes: Any) -> TrainConfig:
    """`config` for algorithm `name`: the run's settings kept, the algorithm's sections from
    `changes` (a dict is a section's changes), sections both algorithms have (PPO's) carried over,
    the rest at the algorithm's defaults."""
    cls = config_class(name)
    carried = {s: getattr(config.agent, s) for s in sections(cls()) if s in sections(config.agent)}
    agent = cls(**carried)
    return dataclasses.replace(config, agent=agent).replace(**changes)


def load_config(data: dict[str, Any]) -> TrainConfig:
    """A run's config from its `config.json` (or a checkpoint's copy of it)."""
    from trmrl.plugins import import_modules

    import_modules(data.get("imports", ()))  # the run's own task distributions and algorithms
    name = data.get("algo", "trmrl")  # the oldest runs recorded no algorithm: they were TrMRL's
    if "same_tasks" not in data.get("eval", {}):  # written when every meta-test drew fresh tasks
        data = {**data, "eval": {**data.get("eval", {}), "same_tasks": False}}
    return run_config_from_dict(data, config_class(name))


def read_run_config(run_dir: Path) -> TrainConfig:
    """The resolved config a run directory's run was started with (its config.json)."""
    from trmrl.errors import CheckpointError
    from trmrl.rundir import RunDir

    path = RunDir(run_dir).config
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no config.json)")
    try:
        return load_config(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise CheckpointError(f"unreadable {path}: {exc}") from None
