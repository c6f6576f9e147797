"""RL^2 (Duan et al. 2016; Wang et al. 2016) with PPO: a recurrent policy over the same trial
inputs as TrMRL, [s_t, a_{t-1}, r_{t-1}, d_{t-1}], whose hidden state is carried across the
episodes of a trial and reset at a trial start, so it adapts in memory over the whole trial
rather than over a window.

The critic is a separate recurrent network (`nets/recurrent.py`): the value of a trial state
depends on the hidden task, which only the history reveals, and keeping it apart keeps the
value loss out of the policy's memory. The update replays the stored inputs with truncated
backpropagation through time: each env's rollout is cut into chunks of `rl2.bptt_chunk` steps
and at trial starts,

    step           0  1  2  3 | 4  5 | 6  7 | 8  9 10 11 | 12 13      chunk 4, a trial of 6 steps
    trial start    ^                 ^                     ^
    chunk starts   0            4      6      8            12
    starts from    0            h_4    0      h_8          0           h_t: stored at sampling

and each chunk runs through torch.nn.GRU/LSTM from the hidden state the policy had at its
first step (recorded while sampling; zero at a trial start). GAE runs over whole trials, as
for TrMRL.

Shapes: T steps, B envs, S chunks, L = bptt_chunk, O augmented observation, A actions, H hidden.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from trmrl import distributed, ppo
from trmrl.algos.common import InMemoryPPO, TwoPhaseOptimizers
from trmrl.config import OnPolicyConfig, PPOConfig, TaskConfig, TrainConfig, require
from trmrl.linear_baseline import baseline_features, fit_linear_baseline, steps_since_start
from trmrl.nets.recurrent import RecurrentActorCritic, RecurrentState, RL2Config
from trmrl.protocols import Starts, Step
from trmrl.rollout import cut_sequences
from trmrl.sampler import Rollout, TrialSampler, ended_within
from trmrl.seeding import Stream, random_rows, torch_generator
from trmrl.tasks import TaskDistribution
from trmrl.trial import forget_previous_episode


@dataclass(frozen=True)
class RL2Agent(OnPolicyConfig):
    """RL^2's part of a run's config: the recurrent agent (`rl2`), PPO (`ppo`)."""

    name: ClassVar[str] = "rl2"
    rl2: RL2Config = field(default_factory=RL2Config)

    def check(self, task: TaskConfig) -> None:
        super().check(task)
        require(self.rl2.baseline == "critic" or not self.ppo.bootstrap_truncation,
                "rl2.baseline linear fits Monte-Carlo returns (a trial's end is terminal): "
                "use it with --ppo.no-bootstrap-truncation")
        require(self.rl2.baseline == "critic" or self.ppo.gae_across_episodes,
                "rl2.baseline linear fits returns over the whole trial: use it with --ppo.gae-across-episodes")


class RL2Policy:
    """The acting agent: `Policy[RecurrentState]`, one recurrent step per call."""

    def __init__(self, model: RecurrentActorCritic) -> None:
        self.model = model

    @property
    def device(self) -> torch.device:
        return self.model.log_std.device

    def initial_state(self, n: int) -> RecurrentState:
        return self.model.initial_state(n)

    def visible(self, inputs: Tensor, episode_start: Tensor) -> Tensor:
        """The inputs (..., O) as the policy sees them, episode_start (...)."""
        if self.model.config.carry_previous_episode:
            return inputs
        return forget_previous_episode(inputs, episode_start, self.model.act_dim)

    def reset(self, state: RecurrentState, starts: Starts) -> RecurrentState:
        """Zero the hidden state of the envs that start a trial (kept across episode starts); of
        every env at every step under the `reset_every_step` ablation."""
        if self.model.config.reset_every_step:
            return tuple(torch.zeros_like(s) for s in state)
        return tuple(torch.where(starts.trial[None, :, None], 0.0, s) for s in state)

    @torch.no_grad()
    def act(
        self, inputs: Tensor, state: RecurrentState, starts: Starts, generators: Sequence[torch.Generator] | None,
        deterministic: bool = False,
    ) -> tuple[Step, RecurrentState]:
        out, state = self.model(self.visible(inputs, starts.episode)[None], self.reset(state, starts))
        mean = out.mean[0]
        if deterministic:
            action = mean
        else:
            assert generators is not None, "sampled actions need one generator per env"
            action = mean + out.log_std.exp() * random_rows(generators, mean.shape[1:], device=self.device)
        return Step(action, out.log_prob(action[None])[0], out.value[0]), state

    @torch.no_grad()
    def value(self, inputs: Tensor, state: RecurrentState, starts: Starts) -> Tensor:
        _, critic_state = self.model.split(self.reset(state, starts))
        return self.model.critic_forward(self.visible(inputs, starts.episode)[None], critic_state)[0][0]


class _ChunkStartRecorder:
    """The policy, keeping the state it starts step t from at every t % chunk == 0 (after the
    trial-start reset): the hidden states the update replays chunks from."""

    def __init__(self, policy: RL2Policy, chunk: int) -> None:
        self.policy, self.chunk = policy, chunk
        self.states: list[RecurrentState] = []
        self._t = 0
        self.device = policy.device

    def initial_state(self, n: int) -> RecurrentState:
        self.states, self._t = [], 0
        return self.policy.initial_state(n)

    def act(
        self, inputs: Tensor, state: RecurrentState, starts: Starts, generators: Sequence[torch.Generator] | None,
        deterministic: bool = False,
    ) -> tuple[Step, RecurrentState]:
        if self._t % self.chunk == 0:
            self.states.append(self.policy.reset(state, starts))
        self._t += 1
        return self.policy.act(inputs, state, starts, generators, deterministic)

    def value(self, inputs: Tensor, state: RecurrentState, starts: Starts) -> Tensor:
        return self.policy.value(inputs, state, starts)


@dataclass
class Chunks:
    """The epoch's samples as S sequences of up to L steps, padded (`valid` marks real steps)."""

    inputs: Tensor  # (L, S, O)
    actions: Tensor  # (L, S, A)
    log_probs: Tensor  # (L, S) at sampling time
    advantages: Tensor  # (L, S)
    returns: Tensor  # (L, S)
    values: Tensor  # (L, S) at sampling time
    valid: Tensor  # (L, S) bool
    initial: RecurrentState  # each (1, S, H): the state at each chunk's first step

    def __len__(self) -> int:
        return self.valid.shape[1]


def make_chunks(rollout: Rollout, chunk_states: Sequence[RecurrentState], chunk: int, config: PPOConfig) -> Chunks:
    """Cut every env's rollout at each multiple of `chunk` and at each trial start (see the module
    docstring); advantages and returns over whole trials."""
    advantages, returns = ppo.advantages_and_returns(rollout, config)
    cut = rollout.trial_start.clone()  # (T, B)
    cut[::chunk] = True
    sequences = cut_sequences(cut, chunk)
    start, env, valid, gather = sequences.time[0], sequences.env, sequences.valid, sequences.gather
    recorded = [torch.stack([s[j] for s in chunk_states], dim=1) for j in range(len(chunk_states[0]))]  # (1, C, B, H)
    at_boundary = start % chunk == 0
    initial = tuple(torch.where(at_boundary[None, :, None], r[0][start // chunk, env][None], 0.0) for r in recorded)
    return Chunks(gather(rollout.obs), gather(rollout.actions), gather(rollout.log_probs), gather(advantages),
                  gather(returns), gather(rollout.values), valid, initial)


def linear_baseline(rollout: Rollout, coefficients: Tensor | None, gamma: float) -> tuple[Rollout, Tensor]:
    """garage's RL^2 baseline (`rl2.baseline linear`) on the epoch's trials: the rollout with its
    values from the previous fit (0 before the first), and the coefficients (F,) fitted on this
    epoch's discounted returns for the next. Its features read the trial input and the step of
    the trial, the returns run over the whole trial (garage concatenates its episodes). A trial
    still running when the rollout stops (restarted after an early termination) is left out of
    the fit, and its last step bootstraps from the previous fit at the next observation."""
    steps = steps_since_start(rollout.trial_start)
    features = baseline_features(rollout.obs, steps)  # (T, B, F)
    zeros = torch.zeros_like(rollout.rewards)
    predict = (lambda f: (f.double() @ coefficients).to(zeros.dtype)) if coefficients is not None else None
    values = predict(features) if predict else zeros
    running = ~rollout.trial_end[-1]  # (B,)
    cut_values = torch.zeros_like(rollout.cut_values)
    if predict and rollout.next_obs is not None and running.any():
        cut_values = torch.where(running, predict(baseline_features(rollout.next_obs[-1], steps[-1] + 1)), 0.0)
    cut = rollout.trial_end.clone()
    cut[-1] = True
    returns = ppo.discounted_returns(rollout.rewards, zeros, zeros, cut, gamma)  # a running trial's: cut short
    whole = ended_within(rollout.trial_end)  # (T, B): steps of trials that ended within the rollout
    fitted = fit_linear_baseline(features[whole][None], returns[whole][None], LINEAR_BASELINE_REG)
    return dataclasses.replace(rollout, values=values, bootstrap_values=zeros, cut_values=cut_values), fitted[0]


LINEAR_BASELINE_REG = 1e-5
"""garage's LinearFeatureBaseline reg_coeff."""


def rl2_update(model: RecurrentActorCritic, policy_optimizer: torch.optim.Optimizer,
               value_optimizer: torch.optim.Optimizer, chunks: Chunks, config: TrainConfig,
               generator: torch.Generator, schedules: tuple[ppo.LRSchedule, ppo.LRSchedule],
               first_step: int) -> dict[str, float]:
    """`ppo.ppo_update` over the epoch's chunks, each replayed through the recurrent cores."""
    actor_initial, critic_initial = model.split(chunks.initial)

    def policy_terms(index: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        mean, _ = model.actor_forward(chunks.inputs[:, index], tuple(s[:, index] for s in actor_initial))
        out = model.distribution(mean, chunks.values[:, index])
        valid = chunks.valid[:, index]
        log_probs = out.log_prob(chunks.actions[:, index])[valid]
        return log_probs, chunks.log_probs[:, index][valid], chunks.advantages[:, index][valid], out.entropy()

    def value_terms(index: Tensor) -> tuple[Tensor, Tensor]:
        values, _ = model.critic_forward(chunks.inputs[:, index], tuple(s[:, index] for s in critic_initial))
        valid = chunks.valid[:, index]
        return values[valid], chunks.returns[:, index][valid]

    per_minibatch = max(1, config.ppo.minibatch_size // config.rl2.bptt_chunk)
    stats = ppo.ppo_update(
        len(chunks), per_minibatch,
        (ppo.Phase(policy_optimizer, model.policy_parameters(), schedules[0]), policy_terms),
        (ppo.Phase(value_optimizer, model.value_parameters(), schedules[1]), value_terms)
        if config.rl2.baseline == "critic" else None,
        model.value_log_std, config.ppo, generator, first_step,
        lambda index: chunks.advantages[:, index][chunks.valid[:, index]])
    valid = chunks.valid
    stats["losses/explained_variance"] = ppo.explained_variance(chunks.values[valid], chunks.returns[valid])
    with torch.no_grad():
        # the Gaussian's entropy depends on its (state-independent) std alone
        zero = model.log_std.new_zeros(())
        stats["losses/entropy"] = float(model.distribution(zero.expand(model.act_dim), zero).entropy())
        stats["charts/action_std"] = float(model.log_std.exp().mean())
    return stats


class RL2(InMemoryPPO):
    """`Algorithm`: the recurrent actor-critic, its two optimisers and its sampler."""

    Config: ClassVar[type[RL2Agent]] = RL2Agent
    """This algorithm's part of a run's config."""

    def __init__(self, config: TrainConfig, distribution: TaskDistribution) -> None:
        self.config = config
        t, chunk = config.task, config.rl2.bptt_chunk
        self.sampler = TrialSampler.for_training(distribution, t, distributed.share_size(t.tasks_per_epoch))
        self.model = RecurrentActorCritic(self.sampler.obs_dim, self.sampler.act_dim, config.rl2,
                                          torch_generator(config.seed, Stream.INIT)).to(distributed.device())
        self.optimizers = TwoPhaseOptimizers.create(self.model, config.ppo)
        self.policy = RL2Policy(self.model)
        self.schedules = ppo.lr_schedules(config.ppo, t.tasks_per_epoch * t.steps_per_trial)
        # the LR schedule's clock: gradient steps per phase in an epoch of whole trials (derived, so
        # resuming needs no counter; early terminations add chunks, but not to the clock)
        chunks = t.tasks_per_epoch * math.ceil(t.steps_per_trial / chunk)
        self.steps_per_epoch = config.ppo.update_epochs * math.ceil(chunks / max(1, config.ppo.minibatch_size // chunk))
        self.baseline: Tensor | None = None  # rl2.baseline linear: the last fit's coefficients

    def collecting_policy(self) -> _ChunkStartRecorder:
        self.recorder = _ChunkStartRecorder(self.policy, self.config.rl2.bptt_chunk)
        return self.recorder

    def update(self, rollout: Rollout, epoch: int, generator: torch.Generator) -> tuple[dict[str, float], int]:
        # each process recorded the states of its own tasks: gather them in task order, as the rollout
        n_tasks = rollout.rewards.shape[1]
        rollout = dataclasses.replace(rollout, obs=self.policy.visible(rollout.obs, rollout.episode_start))
        states = [distributed.gather_columns(torch.stack(h), n_tasks, dim=2).unbind(0) for h in zip(*self.recorder.states)]
        if self.config.rl2.baseline == "linear":  # every process fits the same gathered rollout
            rollout, self.baseline = linear_baseline(rollout, self.baseline, self.config.ppo.gamma)
        chunks = make_chunks(rollout.to(self.policy.device), list(zip(*states)), self.config.rl2.bptt_chunk,
                             self.config.ppo)
        metrics = rl2_update(self.model, self.optimizers.policy, self.optimizers.value, chunks, self.config,
                             generator, self.schedules, epoch * self.steps_per_epoch)
        return metrics, int(chunks.valid.sum())

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | ({"baseline": self.baseline} if self.baseline is not None else {})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.baseline = state.get("baseline")
