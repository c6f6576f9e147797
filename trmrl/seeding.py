"""Every random choice comes from a generator derived from (run seed, stream, index).

Deriving per-epoch generators from the seed, instead of carrying one generator's state through
the run, makes a resumed run draw exactly what an uninterrupted run draws without saving any RNG
state: epoch k's tasks, env resets, actions and minibatches depend only on (seed, k).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import numpy as np
import torch


class Stream(enum.IntEnum):
    """Independent random streams of a run. Held-out evaluation tasks never share a stream with
    training tasks."""

    INIT = 0
    TRAIN_TASKS = 1
    TRAIN_ENVS = 2
    TRAIN_ACTIONS = 3
    MINIBATCHES = 4
    EVAL_TASKS = 5
    EVAL_ENVS = 6
    EVAL_ACTIONS = 7
    TEST_TASKS = 8
    TEST_ENVS = 9
    TEST_ACTIONS = 10


def seed_sequence(seed: int, stream: Stream, index: int = 0) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, int(stream), index])


def numpy_rng(seed: int, stream: Stream, index: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed_sequence(seed, stream, index))


def torch_generator(seed: int, stream: Stream, index: int = 0) -> torch.Generator:
    state = seed_sequence(seed, stream, index).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def env_seeds(seed: int, stream: Stream, index: int, n: int) -> list[int]:
    """One reset seed per env, for the trials of one epoch."""
    return [int(s) for s in seed_sequence(seed, stream, index).generate_state(n, dtype=np.uint32)]


def gaussian_noise(generators: Sequence[torch.Generator] | torch.Generator | None, shape: torch.Size) -> torch.Tensor:
    """Standard normal noise of `shape` (B, ...): row b from generators[b], so each env's actions
    depend on its own stream only (a single generator draws all rows)."""
    if generators is None or isinstance(generators, torch.Generator):
        return torch.randn(shape, generator=generators)
    return torch.stack([torch.randn(shape[1:], generator=g) for g in generators])
