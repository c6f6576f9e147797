"""What a sampler hands an algorithm: one batch of trials, time-major, with the sampling-time
log-probs and values the PPO family needs.

Shapes: T steps, B envs, O augmented observation, A actions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Rollout:
    """T steps of B trials (one task each). Every tensor is (T, B, ...).

    obs[t] is what the trial env gave at step t; the flags say what happened *after* step t's
    action, except the two start flags, which say where step t begins an episode / a trial.
    """

    obs: Tensor  # (T, B, O) augmented observations [s_t, a_{t-1}, r_{t-1}, d_{t-1}]
    actions: Tensor  # (T, B, A) actions sent to the envs
    log_probs: Tensor  # (T, B) log pi(a_t | memory_t) at sampling time
    values: Tensor  # (T, B) V at sampling time
    rewards: Tensor  # (T, B)
    episode_start: Tensor  # (T, B) bool: step t is the first of an episode
    trial_start: Tensor  # (T, B) bool: step t is the first of a trial
    episode_end: Tensor  # (T, B) bool: the episode ended after step t (termination or time limit)
    terminated: Tensor  # (T, B) bool: ... by a true termination
    trial_end: Tensor  # (T, B) bool: the trial ended after step t
    bootstrap_values: Tensor  # (T, B) V(final observation) where an episode hit its time limit
    # after step t; 0 elsewhere
    cut_values: Tensor  # (B,) V of the input after step T-1 where the rollout stopped inside a
    # trial (the trial goes on: what it bootstraps from); 0 where the trial ended at T-1
    success: Tensor | None = None  # (T, B) bool: the env reported info["success"] after step t
    next_obs: Tensor | None = None  # (T, B, O) the observation after step t in the same episode
    # (where the episode ended, its final one): what an off-policy learner stores as s'

    @property
    def num_steps(self) -> int:
        return self.rewards.numel()

    def to(self, device: torch.device) -> Rollout:
        """The rollout on `device` (one copy per tensor; itself where it already is)."""
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).to(device)
                                            for f in dataclasses.fields(self) if getattr(self, f.name) is not None})

    @classmethod
    def concat(cls, rollouts: Sequence[Rollout]) -> Rollout:
        """Rollouts of equal length side by side: B is the sum of theirs."""
        def cat(name: str) -> Tensor | None:
            parts = [getattr(r, name) for r in rollouts]
            if any(p is None for p in parts):
                return None
            return torch.cat(parts, dim=1 if parts[0].dim() > 1 else 0)
        return cls(**{f.name: cat(f.name) for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class Sequences:
    """Where a rollout's (T, B) steps fall when each env's column is cut into sequences:
    sequence s is env[s]'s steps time[:, s] (L, S), of which the first length[s] are its own
    (the rest repeat its last step and are padding). Env-major, in time order within an env."""

    time: Tensor  # (L, S)
    env: Tensor  # (S,)
    length: Tensor  # (S,)

    @property
    def valid(self) -> Tensor:
        """(L, S) bool: the sequences' own steps."""
        return torch.arange(self.time.shape[0], device=self.length.device)[:, None] < self.length[None, :]

    def gather(self, x: Tensor) -> Tensor:
        """x (T, B, ...) -> (L, S, ...)."""
        return x[self.time, self.env[None, :].expand_as(self.time)]


def cut_sequences(cut: Tensor, padded_length: int | None = None) -> Sequences:
    """Cut every env's column of (T, B) steps where `cut` is True (a sequence starts there; step
    0 always starts one). Padded to `padded_length` (default: the longest sequence).

        step    0  1  2  3  4  5      cut at 0 and 3: sequences [0 1 2] and [3 4 5]
    """
    steps = cut.shape[0]
    device = cut.device
    starts = cut.clone()
    starts[0] = True
    env, start = starts.T.nonzero(as_tuple=True)  # (S,) each
    # a sequence ends at the next start of the same env, or at T
    same_env_next = torch.cat([env[1:] == env[:-1], torch.tensor([False], device=device)])
    following = torch.cat([start[1:], torch.tensor([steps], device=device)])
    length = torch.where(same_env_next, following, steps) - start
    padded = int(length.max()) if padded_length is None else padded_length
    time = (start[None, :] + torch.arange(padded, device=device)[:, None]).clamp(max=steps - 1)
    time = torch.minimum(time, (start + length - 1)[None, :])
    return Sequences(time, env, length)
