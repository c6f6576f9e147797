"""What the PPO-trained, in-memory algorithms (TrMRL, RL^2) share: a model with policy and value
parameters, one AdamW per update phase (the original TrMRL code's layout) saved and restored
together, and a policy that adapts in memory."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from trmrl import checkpoint
from trmrl.config import PPOConfig
from trmrl.protocols import InMemoryLearner, Policy


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


class InMemoryPPO:
    """Base of TrMRL and RL^2 (`Algorithm`): they differ in their policy, batch and update; their
    meta-learner (the policy itself, adapting within a trial) and checkpoint state are alike."""

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
