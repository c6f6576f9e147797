"""The TrMRL agent: embed each input of the window into a working memory, run the causal
transformer over the window, read the newest position ("latest memory"), and act with a
Gaussian whose mean is an MLP of it and whose log-std is a learned, state-independent vector.

Shapes: N windows, W window, O augmented observation, D d_model, A actions.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from trmrl.config import require
from trmrl.nets.transformer import CausalTransformer, Encoding, KVCache, initialize

MIN_LOG_STD = math.log(1e-6)
MemoryScope = Literal["episode", "trial"]
MemoryKind = Literal["window", "whole"]
TFixup = Literal["code", "paper", "off"]


@dataclass(frozen=True)
class ModelConfig:
    """The TrMRL agent: working memory -> causal transformer (no LayerNorm) -> Gaussian head."""

    d_model: int = 32
    """D: width of a working memory and of the transformer."""
    n_heads: int = 4
    """Attention heads; must divide d_model."""
    d_ff: int = 128
    """Hidden width of each layer's feed-forward block."""
    n_layers: int = 2
    """L: transformer layers (also the L of T-Fixup)."""
    window: int = 5
    """W: number of most recent working memories the transformer attends over."""
    memory_scope: MemoryScope = "episode"
    """Where the window is cleared: every episode start ('episode', the original code) or only
    at a trial start ('trial', the window then spans episode boundaries)."""
    tfixup: TFixup = "code"
    """T-Fixup variant: 'code' scales Q, K, V, out-proj and FFN (original code), 'paper' scales
    only V, out-proj and FFN (Huang et al. 2020), 'off' keeps plain xavier init."""
    head_hidden: tuple[int, ...] = (64, 64)
    """Hidden sizes of the policy's tanh MLP head."""
    value_hidden: tuple[int, ...] = (64, 64)
    """Hidden sizes of the value function's tanh MLP."""
    init_std: float = 0.5
    """Initial standard deviation of the Gaussian policy (state-independent, learned)."""
    output_weights_scale: float = 1.0
    """Xavier gain of the policy head's output layer."""
    shared_log_std: bool = False
    """One learned log-std shared by every action dimension (the original code until 2021-05-11,
    when it became one per dimension, the default here)."""
    share_network: bool = False
    """True: the value head reads the policy's latest memory (gradients reach the transformer).
    False: a separate value MLP reads the single augmented observation."""
    memory: MemoryKind = "window"
    """Which working memories the transformer attends over: 'window', the last W, each step's
    window run anew (the paper); 'whole', every one since the scope's last clear (with the
    'trial' scope the whole trial), in one causal pass per trial in the update and with a
    key/value cache while acting (`window` is then unused)."""
    positions: Encoding = "sinusoidal"
    """'whole' memory: how positions are told apart: 'sinusoidal' (the paper's), 'none',
    'alibi' or 'rotary' (these two see distances only). Windows use the paper's sinusoids."""
    context: int | None = None
    """'whole' memory: attend to at most this many most recent working memories (the cache
    rolls); None: every one since the last clear."""
    newest_only_last_layer: bool = True
    """Compute the last layer at the newest position only (the only output read); same result,
    fewer FLOPs. False runs every position through every layer, as the original code."""

    def __post_init__(self) -> None:
        for name in ("d_model", "n_heads", "d_ff", "n_layers"):
            require(getattr(self, name) >= 1, f"model.{name} must be >= 1")
        require(
            self.d_model % self.n_heads == 0,
            f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads})",
        )
        require(self.window >= 1, f"model.window must be >= 1 (got {self.window})")
        require(self.init_std > 0, "model.init_std must be > 0")
        if self.memory == "window":
            require(self.positions == "sinusoidal" and self.context is None,
                    "model.positions and model.context apply to model.memory 'whole' only")
        require(self.context is None or self.context >= 1, f"model.context must be >= 1 (got {self.context})")
        require(self.positions != "rotary" or (self.d_model // self.n_heads) % 2 == 0,
                "model.positions 'rotary' needs an even head width (model.d_model / model.n_heads)")



def mlp(sizes: Sequence[int], output_gain: float, generator: torch.Generator) -> nn.Sequential:
    """tanh MLP; xavier-uniform weights (the last with `output_gain`), zero biases."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        linear = nn.Linear(n_in, n_out)
        last = i == len(sizes) - 2
        with torch.no_grad():
            nn.init.xavier_uniform_(linear.weight, gain=output_gain if last else 1.0, generator=generator)
            linear.bias.zero_()
        layers += [linear] if last else [linear, nn.Tanh()]
    return nn.Sequential(*layers)


def gaussian_log_prob(mean: Tensor, log_std: Tensor, action: Tensor) -> Tensor:
    """log N(action; mean, diag(exp(log_std)^2)), summed over the last (action) dimension."""
    z = (action - mean) / log_std.exp()
    return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_entropy(log_std: Tensor) -> Tensor:
    """Entropy of a diagonal Gaussian, summed over the last (action) dimension."""
    return (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)


def gaussian_kl(mean_p: Tensor, log_std_p: Tensor, mean_q: Tensor, log_std_q: Tensor) -> Tensor:
    """KL(p || q) of diagonal Gaussians, summed over the last (action) dimension."""
    var_p, var_q = (2 * log_std_p).exp(), (2 * log_std_q).exp()
    return (log_std_q - log_std_p + (var_p + (mean_p - mean_q).pow(2)) / (2 * var_q) - 0.5).sum(-1)


@dataclass
class PolicyOutput:
    """Per window: action mean (N, A), value (N,); log_std (A,) is shared by all windows."""

    mean: Tensor
    log_std: Tensor
    value: Tensor

    def log_prob(self, action: Tensor) -> Tensor:
        """log pi(a | window), summed over action dimensions: (N, A) -> (N,)."""
        return gaussian_log_prob(self.mean, self.log_std, action)

    def entropy(self) -> Tensor:
        """Entropy of the Gaussian (the same for every window): scalar."""
        return gaussian_entropy(self.log_std)


class ActorCritic(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, config: ModelConfig, generator: torch.Generator) -> None:
        super().__init__()
        self.config = config
        self.obs_dim, self.act_dim = obs_dim, act_dim
        d = config.d_model
        self.embedding = nn.Linear(obs_dim, d, bias=False)
        self.transformer = CausalTransformer(d, config.n_heads, config.d_ff, config.n_layers, config.window)
        initialize(self.embedding, self.transformer, config.tfixup, generator)
        self.head = mlp([d, *config.head_hidden, act_dim], config.output_weights_scale, generator)
        self.log_std = nn.Parameter(torch.full((1 if config.shared_log_std else act_dim,), math.log(config.init_std)))
        value_in = d if config.share_network else obs_dim
        self.value_net = mlp([value_in, *config.value_hidden, 1], 1.0, generator)
        # sigma of the Gaussian value model (used by the 'nll' value loss)
        self.value_log_std = nn.Parameter(torch.zeros(()))

    def latest_memory(self, windows: Tensor, lengths: Tensor) -> Tensor:
        """windows (N, W, O), lengths (N,) in 1..W -> final-layer output at the newest slot (N, D)."""
        x = self.embedding(windows)
        if self.config.newest_only_last_layer:
            return self.transformer.latest(x, lengths)
        return self.transformer(x)[torch.arange(len(windows), device=x.device), lengths - 1]

    def forward(self, windows: Tensor, lengths: Tensor) -> PolicyOutput:
        memory = self.latest_memory(windows, lengths)
        log_std = self.log_std.clamp(min=MIN_LOG_STD).expand(self.act_dim)  # (A,), a view of a shared one
        return PolicyOutput(self.head(memory), log_std, self.value(windows, lengths, memory))

    def output(self, memory: Tensor, inputs: Tensor) -> PolicyOutput:
        """The policy and value of latest memories (..., D) whose newest inputs are (..., O)."""
        log_std = self.log_std.clamp(min=MIN_LOG_STD).expand(self.act_dim)
        return PolicyOutput(self.head(memory), log_std, self.value_of(memory, inputs))

    def value_of(self, memory: Tensor, inputs: Tensor) -> Tensor:
        """V (...,) from the latest memories (..., D) when shared, else from the inputs (..., O)."""
        return self.value_net(memory if self.config.share_network else inputs).squeeze(-1)

    def sequence_memories(self, inputs: Tensor, lengths: Tensor) -> Tensor:
        """'whole' memory: every step's latest memory (N, S, D) of sequences of inputs (N, S, O)
        with lengths (N,), in one causal pass."""
        c = self.config
        return self.transformer.over_sequences(self.embedding(inputs), lengths, c.positions, c.context)[0]

    def step(self, inputs: Tensor, cache: KVCache) -> PolicyOutput:
        """'whole' memory: the policy and value at one new input (B, O) per sequence, after those
        in `cache` (which takes it in)."""
        return self.output(self.transformer.step(self.embedding(inputs), cache, self.config.positions), inputs)

    def empty_cache(self, n: int) -> KVCache:
        c = self.config
        return KVCache.empty(n, c.n_layers, c.n_heads, c.d_model // c.n_heads, c.context, self.log_std.device)

    def value(self, windows: Tensor, lengths: Tensor, memory: Tensor | None = None) -> Tensor:
        """V (N,): from the latest memory when shared (computed unless given), else from the
        newest augmented observation alone."""
        if self.config.share_network:
            x = self.latest_memory(windows, lengths) if memory is None else memory
        else:
            x = windows[torch.arange(len(windows), device=windows.device), lengths - 1]
        return self.value_net(x).squeeze(-1)

    def policy_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.embedding.parameters()
        yield from self.transformer.parameters()
        yield from self.head.parameters()
        yield self.log_std

    def value_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.value_net.parameters()
        yield self.value_log_std
        if self.config.share_network:
            yield from self.embedding.parameters()
            yield from self.transformer.parameters()
