"""The few sockets every algorithm, task distribution and evaluator plugs into (the task seam,
`Task`, `TaskEnv` and `TaskDistribution`, is defined in `trmrl.tasks.base`).

    task distribution -> trial env -> sampler (carries the policy's state) -> Rollout
        -> algorithm (builds its own training batch, updates) -> meta-learner -> evaluator

Shapes: B envs (one task each), O augmented observation, A action.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import torch
from torch import Tensor

from trmrl.tasks.base import Task, TaskDistribution, TaskEnv

if TYPE_CHECKING:
    from trmrl.rollout import Rollout

__all__ = ["Starts", "Step", "Policy", "MetaLearner", "InMemoryLearner", "Algorithm", "TaskPool", "ExploresFirst", "ShowsAttention",
           "Task", "TaskDistribution", "TaskEnv"]

S = TypeVar("S")


@dataclass(frozen=True)
class Starts:
    """Which of the B envs begin an episode / a trial at this step (both (B,) bool; a trial start
    is also an episode start). A policy resets whatever memory its scope says here."""

    episode: Tensor
    trial: Tensor


@dataclass(frozen=True)
class Step:
    """One batched action: actions (B, A), their log-probs (B,) and values (B,)."""

    actions: Tensor
    log_probs: Tensor
    values: Tensor


class Policy(Protocol[S]):
    """An acting agent with explicit state: TrMRL's window, RL^2's hidden state, PEARL's
    posterior; MAML's is None (its adapted parameters live in the meta-learner). The sampler
    creates the state, hands it back at every step and never looks inside it."""

    def initial_state(self, n: int) -> S:
        """The state of n envs before any input."""
        ...

    def act(
        self, inputs: Tensor, state: S, starts: Starts, generators: Sequence[torch.Generator] | None,
        deterministic: bool = False,
    ) -> tuple[Step, S]:
        """Take one step's inputs (B, O) into the state (resetting it where `starts` says) and act.
        `generators` holds one random stream per env (row); None only with `deterministic`."""
        ...

    def value(self, inputs: Tensor, state: S, starts: Starts) -> Tensor:
        """V (B,) of inputs (B, O) as `act` would see them, leaving `state` unchanged (used to
        bootstrap at time limits and where a rollout stops mid-trial)."""
        ...


@runtime_checkable
class MetaLearner(Protocol):
    """What the evaluator needs (garage's meta-evaluation contract: explore, adapt, evaluate)."""

    adapts_in_memory: bool
    """True: one trial of K episodes is exploration, adaptation and evaluation at once."""

    def exploration_policy(self) -> Policy[Any]: ...

    def adapt(self, policy: Policy[Any], exploration: Rollout) -> Policy[Any]:
        """A policy adapted to the task of `exploration` (one task, B = 1)."""
        ...


@dataclass
class InMemoryLearner:
    """A policy as a meta-learner (TrMRL, RL^2, VariBAD): it adapts in its own memory within a
    trial, so exploring, adapting and evaluating are one trial."""

    policy: Policy[Any]
    adapts_in_memory: bool = True

    def exploration_policy(self) -> Policy[Any]:
        return self.policy

    def adapt(self, policy: Policy[Any], exploration: Rollout) -> Policy[Any]:
        return policy


class Algorithm(Protocol):
    """What the training loop needs of a meta-RL algorithm. Its class also declares `Config`
    (its part of a run's config, a `trmrl.config.AlgorithmConfig`) and `data_parallel`."""

    data_parallel: bool
    """Its iteration splits over processes (`trmrl.distributed`): collection by task, its
    update's minibatches by row."""

    def train_iteration(self, tasks: Sequence[Task], epoch: int) -> dict[str, float]:
        """One meta-training iteration on a batch of training tasks; returns namespaced metrics
        (`charts/`, `losses/`, `time/`). Every random draw derives from (seed, epoch)."""
        ...

    def meta_learner(self) -> MetaLearner:
        """The current agent, for the evaluator."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()` output; a mismatch raises CheckpointError."""
        ...


@runtime_checkable
class TaskPool(Protocol):
    """An algorithm that keeps data per training task (PEARL's replay buffers) trains on a fixed
    pool of tasks and picks each epoch's tasks from it itself; others get fresh draws from the
    distribution every epoch."""

    def epoch_tasks(self, epoch: int) -> Sequence[Task]:
        """The tasks that collect data in epoch `epoch` (drawn from (seed, epoch) alone)."""
        ...


@runtime_checkable
class ExploresFirst(Protocol):
    """A meta-learner that acts for some episodes on a test task before it adapts (MAML's
    gradient step, PEARL's posterior): `trmrl eval --exploration-episodes N`."""

    def with_exploration_episodes(self, n: int) -> MetaLearner:
        """The same learner, exploring for n episodes before it adapts."""
        ...


@runtime_checkable
class ShowsAttention(Protocol):
    """An algorithm whose policy attends over working memories (TrMRL): `trmrl eval --attention`."""

    def save_attention(self, tester: Any, out_dir: Path) -> list[Path]:
        """Run one trial of the tester's first task; save the attention over it to out_dir."""
        ...
