"""The RL^2 agent's networks: for the policy, an optional tanh MLP encoder of each input, a
recurrent core (torch.nn.GRU or LSTM, run over whole sequences) and a Gaussian head with a
state-independent log-std; for the critic, its own encoder, core and linear value head.

Shapes: L sequence length, N sequences, O augmented observation, H hidden size, A actions.
A recurrent state is a tuple of (1, N, H) tensors: (actor h, critic h) for a GRU and
(actor h, actor c, critic h, critic c) for an LSTM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from trmrl.config import require
from trmrl.nets.policy import MIN_LOG_STD, PolicyOutput, mlp

RecurrentState = tuple[Tensor, ...]


@dataclass(frozen=True)
class RL2Config:
    """The RL^2 agent (`--algo rl2`): a recurrent policy over the same trial inputs, its hidden
    state carried across the episodes of a trial and reset at a trial start, and a separate
    recurrent critic (the value of a trial state depends on the hidden task, which only the
    history reveals). Trained with PPO and truncated backpropagation through time."""

    cell: Literal["gru", "lstm"] = "gru"
    """Recurrent core (torch.nn.GRU or torch.nn.LSTM)."""
    hidden_size: int = 64
    """H: hidden units of the policy's and of the critic's core."""
    encoder_hidden: tuple[int, ...] = ()
    """Hidden sizes of a tanh MLP applied to each input before the core (empty: none)."""
    bptt_chunk: int = 10
    """Truncated BPTT: the update replays stored sequences in chunks of this many steps (a chunk
    also ends where a trial ends), each from the hidden state stored at its first step."""
    init_std: float = 0.5
    """Initial standard deviation of the Gaussian policy (state-independent, learned)."""
    output_weights_scale: float = 1.0
    """Xavier gain of the policy head."""
    reset_every_step: bool = False
    """Ablation: reset the hidden state at every step, leaving the agent no memory (RL^2's
    counterpart of TrMRL's window of 1). Needs rl2.bptt_chunk 1."""
    carry_previous_episode: bool = True
    """At a new episode of a trial the input carries the previous episode's last action and reward
    (the trial env's report); False: zeros, as garage's RL2Env.reset gives them (the boundary flag
    stays; the hidden state carries the trial either way)."""
    baseline: Literal["critic", "linear"] = "critic"
    """What advantages are measured against: 'critic', the recurrent critic trained on the
    returns; 'linear', garage's RL^2 baseline: a ridge regression of the discounted return on
    [x, x^2, t, t^2, t^3, 1] (x the trial input clipped to [-10, 10], t the step of the trial in
    hundreds), fitted after each update and used at the next (the first from zeros); the critic is
    then not trained. A baseline refitted every epoch follows returns of any scale, where a critic
    taking a few Adam steps per epoch may never reach them."""

    def __post_init__(self) -> None:
        require(self.hidden_size >= 1, "rl2.hidden_size must be >= 1")
        require(not self.reset_every_step or self.bptt_chunk == 1,
                 "rl2.reset_every_step needs rl2.bptt_chunk 1 (every chunk starts from a zero state)")
        require(self.bptt_chunk >= 1, "rl2.bptt_chunk must be >= 1")
        require(self.init_std > 0, "rl2.init_std must be > 0")



def _core(cell: str, n_in: int, hidden: int, generator: torch.Generator) -> nn.GRU | nn.LSTM:
    """One recurrent layer, initialised like torch's default (U(+-1/sqrt(H))) but from `generator`."""
    core = (nn.GRU if cell == "gru" else nn.LSTM)(n_in, hidden)
    bound = hidden**-0.5
    with torch.no_grad():
        for weight in core.parameters():
            weight.uniform_(-bound, bound, generator=generator)
    return core


def _as_tuple(state: Tensor | tuple[Tensor, ...]) -> RecurrentState:
    return (state,) if isinstance(state, Tensor) else tuple(state)


def _encoder(obs_dim: int, hidden: tuple[int, ...], generator: torch.Generator) -> nn.Module:
    return nn.Sequential(mlp([obs_dim, *hidden], 1.0, generator), nn.Tanh()) if hidden else nn.Identity()


class RecurrentActorCritic(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, config: RL2Config, generator: torch.Generator) -> None:
        super().__init__()
        self.config = config
        self.obs_dim, self.act_dim = obs_dim, act_dim
        hidden = config.hidden_size
        self.actor_encoder = _encoder(obs_dim, config.encoder_hidden, generator)
        self.critic_encoder = _encoder(obs_dim, config.encoder_hidden, generator)
        n_in = config.encoder_hidden[-1] if config.encoder_hidden else obs_dim
        self.actor = _core(config.cell, n_in, hidden, generator)
        self.critic = _core(config.cell, n_in, hidden, generator)
        self.head = mlp([hidden, act_dim], config.output_weights_scale, generator)
        self.value_head = mlp([hidden, 1], 1.0, generator)
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(config.init_std)))
        self.value_log_std = nn.Parameter(torch.zeros(()))  # sigma of the 'nll' value loss

    @property
    def state_size(self) -> int:
        """Tensors in a recurrent state: 2 (GRU) or 4 (LSTM)."""
        return 2 if self.config.cell == "gru" else 4

    def initial_state(self, n: int) -> RecurrentState:
        device = self.log_std.device
        return tuple(torch.zeros(1, n, self.config.hidden_size, device=device) for _ in range(self.state_size))

    def split(self, state: RecurrentState) -> tuple[RecurrentState, RecurrentState]:
        """(actor's part, critic's part) of a state."""
        half = self.state_size // 2
        return state[:half], state[half:]

    def actor_forward(self, inputs: Tensor, state: RecurrentState) -> tuple[Tensor, RecurrentState]:
        """inputs (L, N, O), the actor's state at the first step -> action means (L, N, A), state after."""
        out, nxt = self.actor(self.actor_encoder(inputs), state[0] if len(state) == 1 else state)
        return self.head(out), _as_tuple(nxt)

    def critic_forward(self, inputs: Tensor, state: RecurrentState) -> tuple[Tensor, RecurrentState]:
        """inputs (L, N, O), the critic's state at the first step -> values (L, N), state after."""
        out, nxt = self.critic(self.critic_encoder(inputs), state[0] if len(state) == 1 else state)
        return self.value_head(out).squeeze(-1), _as_tuple(nxt)

    def distribution(self, mean: Tensor, values: Tensor) -> PolicyOutput:
        return PolicyOutput(mean, self.log_std.clamp(min=MIN_LOG_STD), values)

    def forward(self, inputs: Tensor, state: RecurrentState) -> tuple[PolicyOutput, RecurrentState]:
        """inputs (L, N, O), state at the first step -> outputs (L, N, ...) and the state after."""
        actor_state, critic_state = self.split(state)
        mean, actor_next = self.actor_forward(inputs, actor_state)
        values, critic_next = self.critic_forward(inputs, critic_state)
        return self.distribution(mean, values), actor_next + critic_next

    def policy_parameters(self) -> list[nn.Parameter]:
        return [*self.actor_encoder.parameters(), *self.actor.parameters(), *self.head.parameters(), self.log_std]

    def value_parameters(self) -> list[nn.Parameter]:
        return [*self.critic_encoder.parameters(), *self.critic.parameters(), *self.value_head.parameters(),
                self.value_log_std]
