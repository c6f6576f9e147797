"""The meta-RL algorithms, one module each, behind one protocol (`trmrl.protocols.Algorithm`).

    trmrl train PRESET --algo NAME        (the preset's algorithm when omitted)
    trmrl algos                           lists them

An algorithm is built from the run's config and task distribution; it owns its networks,
optimisers and sampler, and builds its own training batch from a `Rollout`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from trmrl.errors import ConfigError

if TYPE_CHECKING:
    from trmrl.config import TrainConfig
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


def check_name(name: str) -> None:
    if name not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm '{name}'; choose from {', '.join(ALGORITHMS)}")


def algorithm_class(name: str) -> type:
    check_name(name)
    module, _, cls = ALGORITHMS[name][1].partition(":")
    return getattr(importlib.import_module(module), cls)


def make_algorithm(config: TrainConfig, distribution: TaskDistribution) -> Algorithm:
    """The algorithm `config.algo`, built for `distribution`."""
    return algorithm_class(config.algo)(config, distribution)
