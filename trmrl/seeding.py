"""Every random choice comes from a generator derived from (run seed, stream, index).

Deriving per-epoch generators from the seed, instead of carrying one generator's state through
the run, makes a resumed run draw exactly what an uninterrupted run draws without saving any RNG
state: epoch k's tasks, env resets, actions and minibatches depend only on (seed, k). The resets
and actions of each env further derive from its task's index in the epoch, so a run's data do
not depend on how the epoch's tasks are split over samplers or processes.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence

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
    POOL_TASKS = 11  # an algorithm's fixed pool of training tasks (PEARL)
    POOL_ENVS = 12  # ... and the data collected once on all of them before training
    POOL_ACTIONS = 13


def seed_sequence(seed: int, stream: Stream, index: int = 0) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, int(stream), index])


def numpy_rng(seed: int, stream: Stream, index: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed_sequence(seed, stream, index))


def torch_generator(seed: int, stream: Stream, index: int = 0) -> torch.Generator:
    state = seed_sequence(seed, stream, index).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def env_seeds(seed: int, stream: Stream, index: int, tasks: Sequence[int]) -> list[int]:
    """One reset seed per env: env b of evaluation/epoch `index` runs task `tasks[b]` and its seed
    depends on (seed, stream, index, task index) alone, not on how the tasks are laid out."""
    return [int(np.random.SeedSequence([seed, int(stream), index, i]).generate_state(1, dtype=np.uint32)[0])
            for i in tasks]


def task_generators(seed: int, stream: Stream, index: int, tasks: Sequence[int]) -> list[torch.Generator]:
    """One torch generator per env, derived from (seed, stream, index, task index) like `env_seeds`."""
    out = []
    for i in tasks:
        state = np.random.SeedSequence([seed, int(stream), index, i]).generate_state(2, dtype=np.uint32)
        out.append(torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1])))
    return out


def task_streams(
    seed: int, env_stream: Stream, action_stream: Stream, index: int, tasks: Sequence[int]
) -> tuple[list[int], list[torch.Generator]]:
    """(reset seeds, action generators) of the envs that run tasks `tasks` of epoch/evaluation
    `index`: what `TrialSampler.collect` takes."""
    return env_seeds(seed, env_stream, index, tasks), task_generators(seed, action_stream, index, tasks)


def random_rows(
    generators: Sequence[torch.Generator], shape: tuple[int, ...], draw: Callable[..., torch.Tensor] = torch.randn,
    device: torch.device | None = None,
) -> torch.Tensor:
    """(B, *shape) random numbers, row b drawn from generators[b] (`draw` is torch.randn or
    torch.rand), so each env's actions depend on its own stream only. Drawn on the CPU (the same
    numbers on every machine) and moved to `device` in one copy."""
    rows = torch.stack([draw(shape, generator=g) for g in generators])
    return rows if device is None else rows.to(device)
