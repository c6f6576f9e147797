"""What the PPO-trained, in-memory algorithms (TrMRL, RL^2, VariBAD) share: one on-policy loop
(collect -> update -> the epoch's metrics), and for TrMRL and RL^2 a model with policy and value
parameters, one AdamW per update phase (the original TrMRL code's layout) saved and restored
together, and a policy that adapts in memory."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from trmrl import checkpoint, distributed
from trmrl.config import PPOConfig, TrainConfig
from trmrl.protocols import InMemoryLearner, Policy
from trmrl.rollout import Rollout
from trmrl.sampler import TrialSampler, epoch_metrics
from trmrl.seeding import Stream, task_streams, torch_generator
from trmrl.tasks import Task


class TwoPhaseModel(Protocol):
    def policy_parameters(self) -> Iterable[nn.Parameter]: ...

    def value_parameters(self) -> Iterable[nn.Parameter]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


@dataclass
class TwoPhaseOptimizers:
    """AdamW for the policy phase and AdamW for the value phase of `model`."""

    model: TwoPhaseModel
    policy: torch.optim.AdamW
    value: torch.optim.AdamW

    @classmethod
    def create(cls, model: TwoPhaseModel, config: PPOConfig) -> TwoPhaseOptimizers:
        wd = config.weight_decay
        # fused: one kernel for all parameters (the per-parameter loop costs ~1.7 ms a step here)
        return cls(model,
                   torch.optim.AdamW(model.policy_parameters(), lr=config.policy_lr, weight_decay=wd, fused=True),
                   torch.optim.AdamW(model.value_parameters(), lr=config.value_lr, weight_decay=wd, fused=True))

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "policy_optimizer": self.policy.state_dict(),
                "value_optimizer": self.value.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with checkpoint.restoring():
            self.model.load_state_dict(state["model"])
            self.policy.load_state_dict(state["policy_optimizer"])
            self.value.load_state_dict(state["value_optimizer"])


class OnPolicyLoop:
    """One epoch of an on-policy algorithm: collect one trial per task with `collecting_policy()`
    (each env on its task's own streams, split over processes by task), `update` on the rollout
    with the epoch's minibatch stream, and report its metrics with the epoch's own (returns,
    success, timing: `sampler.epoch_metrics`). Subclasses say how to act and how to update."""

    config: TrainConfig
    sampler: TrialSampler

    def collecting_policy(self) -> Policy[Any]:
        """What acts while collecting (RL^2: a recorder of its hidden states around the policy)."""
        raise NotImplementedError

    def update(self, rollout: Rollout, epoch: int, generator: torch.Generator) -> tuple[dict[str, float], int]:
        """Learn from the epoch's rollout; (metrics, the number of samples it trained on)."""
        raise NotImplementedError

    def train_iteration(self, tasks: Sequence[Task], epoch: int) -> dict[str, float]:
        seed = self.config.seed
        start = time.perf_counter()
        streams = task_streams(seed, Stream.TRAIN_ENVS, Stream.TRAIN_ACTIONS, epoch, range(len(tasks)))
        rollout = distributed.collect(self.sampler, self.collecting_policy(), tasks, *streams)
        collected = time.perf_counter()
        metrics, samples = self.update(rollout, epoch, torch_generator(seed, Stream.MINIBATCHES, epoch))
        return metrics | epoch_metrics(rollout, samples, collected - start, time.perf_counter() - collected,
                                       self.sampler.action_bounds)


class InMemoryPPO(OnPolicyLoop):
    """Base of TrMRL and RL^2 (`Algorithm`): they differ in their policy, batch and update; their
    meta-learner (the policy itself, adapting within a trial) and checkpoint state are alike."""

    def collecting_policy(self) -> Policy[Any]:
        return self.policy

    policy: Policy[Any]
    optimizers: TwoPhaseOptimizers
    data_parallel: ClassVar[bool] = True
    """Its iteration splits over processes (`trmrl.distributed`): collection by task, PPO's
    minibatches by row."""

    def meta_learner(self) -> InMemoryLearner:
        return InMemoryLearner(self.policy)

    def state_dict(self) -> dict[str, Any]:
        return self.optimizers.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizers.load_state_dict(state)
