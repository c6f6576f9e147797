"""A causal transformer encoder without LayerNorm, stabilised by T-Fixup. Knows nothing of RL.

Layer (the original code's `TransformerEncoderLayerNoLN`, dropout 0):
    x <- x + MHA(x; causal mask)
    x <- x + W2 relu(W1 x + b1) + b2

Two ways to run it. Over windows (the paper): each window is its own short sequence, positions
0..W-1, and only its newest output is read. Over whole sequences (`over_sequences`): every
position's output in one causal pass, each token computed once per layer, and while acting one
new token at a time against a key/value cache (`step`). A causal pass is exact: the output at
position i depends on positions <= i only, so it equals a window holding the sequence's first
i + 1 tokens. Positions there are counted from the sequence start and encoded in one of
`Encoding`'s ways; `context` caps how far back a query sees (a banded mask; the cache rolls).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sinusoidal_positions(length: int, d_model: int) -> Tensor:
    """PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d)); (length, d)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(length, d_model)
    pe[:, 0::2] = torch.sin(position * frequency)
    pe[:, 1::2] = torch.cos(position * frequency)[:, : d_model // 2]
    return pe


Encoding = Literal["sinusoidal", "none", "alibi", "rotary"]
"""How a whole-sequence pass tells positions apart: 'sinusoidal' adds PE[p] to the input (the
paper), 'none' relies on the causal mask alone, 'alibi' biases each head's scores by -m_h times
the distance (Press et al. 2022), 'rotary' rotates queries and keys by angles p theta (Su et al.
2021). The last two depend on distances only, so they mean the same past any trained length."""


def sinusoidal_at(positions: Tensor, d_model: int) -> Tensor:
    """The rows of `sinusoidal_positions` at integer positions (...,) -> (..., D), for any p."""
    frequency = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32, device=positions.device)
                          * (-math.log(10000.0) / d_model))
    angle = positions.to(torch.float32)[..., None] * frequency
    pe = torch.zeros(*positions.shape, d_model, device=positions.device)
    pe[..., 0::2] = torch.sin(angle)
    pe[..., 1::2] = torch.cos(angle)[..., : d_model // 2]
    return pe


def alibi_slopes(n_heads: int) -> Tensor:
    """m_h = 2^(-8 (h + 1) / H): head h's penalty per step of distance (Press et al. 2022); (H,)."""
    return torch.pow(2.0, -8.0 * torch.arange(1, n_heads + 1, dtype=torch.float32) / n_heads)


def rotate(x: Tensor, positions: Tensor) -> Tensor:
    """Rotary encoding of x (N, H, S, dh) at positions (N, S): each pair (x_i, x_{i + dh/2})
    rotated by p theta_i, theta_i = 10000^(-2i/dh), so q.k depends on the distance alone."""
    half = x.shape[-1] // 2
    theta = torch.pow(10000.0, -torch.arange(half, dtype=torch.float32, device=x.device) / half)
    angle = positions.to(torch.float32)[:, None, :, None] * theta  # (N, 1, S, dh/2)
    cos, sin = angle.cos(), angle.sin()
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def attend(q: Tensor, k: Tensor, v: Tensor, visible: Tensor, bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """softmax(q k^T / sqrt(dh) + bias) v over the keys where `visible`; q (N, H, Q, dh), k and
    v (N, H, K, dh), visible and bias broadcastable to (N, H, Q, K). Returns (output, weights).

    Written out rather than through scaled_dot_product_attention: with windows of 5 and head
    dimension 8 the fused CPU kernel was slower (benchmarks/README.md)."""
    scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    if bias is not None:
        scores = scores + bias
    weights = scores.masked_fill(~visible, float("-inf")).softmax(dim=-1)
    return weights @ v, weights


class CausalSelfAttention(nn.Module):
    fused = False
    """Use torch's scaled_dot_product_attention (benchmarks compare both paths)."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.in_proj = nn.Linear(d_model, 3 * d_model)  # rows: Q, K, V
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """x: (N, W, D) -> (N, W, D); position i attends to positions <= i. With `need_weights`
        the attention is computed explicitly and its weights (N, heads, W, W) returned too."""
        n, w, d = x.shape
        q, k, v = self.in_proj(x).view(n, w, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        if self.fused and not need_weights:
            out, weights = F.scaled_dot_product_attention(q, k, v, is_causal=True), None
        else:
            out, weights = attend(q, k, v, torch.ones(w, w, dtype=torch.bool, device=x.device).tril())
        return self.out_proj(out.transpose(1, 2).reshape(n, w, d)), weights if need_weights else None

    def newest(self, x: Tensor, lengths: Tensor) -> Tensor:
        """Attention output (N, D) for the newest query only (position lengths - 1), which attends
        to positions 0..lengths-1: the only query whose last-layer output is read."""
        n, w, d = x.shape
        heads, dh = self.n_heads, d // self.n_heads
        weight, bias = self.in_proj.weight, self.in_proj.bias
        q = F.linear(x[torch.arange(n, device=x.device), lengths - 1], weight[:d], bias[:d]).view(n, heads, 1, dh)
        k, v = F.linear(x, weight[d:], bias[d:]).view(n, w, 2, heads, dh).permute(2, 0, 3, 1, 4)
        visible = (torch.arange(w, device=x.device) < lengths[:, None])[:, None, None, :]  # (N, 1, 1, W)
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=visible)
        else:
            out, _ = attend(q, k, v, visible)
        return self.out_proj(out.reshape(n, d))


    def project(self, x: Tensor, positions: Tensor, encoding: Encoding) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v (N, H, S, dh) of x (N, S, D) at positions (N, S), rotated if 'rotary'."""
        n, s, d = x.shape
        q, k, v = self.in_proj(x).view(n, s, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        if encoding == "rotary":
            q, k = rotate(q, positions), rotate(k, positions)
        return q, k, v

    def distance_bias(self, query_positions: Tensor, key_positions: Tensor, encoding: Encoding) -> Tensor | None:
        """ALiBi's -m_h (p_q - p_k), (N, H, Q, K) from positions (N, Q) and (N, K); else None."""
        if encoding != "alibi":
            return None
        distance = (query_positions[:, :, None] - key_positions[:, None, :]).to(torch.float32)
        return -alibi_slopes(self.n_heads).to(distance.device)[None, :, None, None] * distance[:, None]

    def over_sequence(self, x: Tensor, positions: Tensor, visible: Tensor | None, encoding: Encoding,
                      need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """x (N, S, D) at positions (N, S); visible (N, S, S) [query, key], or None for the plain
        causal mask -> (N, S, D) and, with `need_weights`, the weights (N, H, S, S)."""
        n, s, d = x.shape
        q, k, v = self.project(x, positions, encoding)
        bias = self.distance_bias(positions, positions, encoding)
        if need_weights:
            causal = torch.ones(s, s, dtype=torch.bool, device=x.device).tril()
            out, weights = attend(q, k, v, causal if visible is None else visible[:, None], bias)
        elif visible is None and bias is None:
            # torch's fused kernel: at a trial of 400 steps about 2x the written-out attention
            out, weights = F.scaled_dot_product_attention(q, k, v, is_causal=True), None
        else:
            mask = visible[:, None] if bias is None else bias.masked_fill(~visible[:, None], float("-inf"))
            out, weights = F.scaled_dot_product_attention(q, k, v, attn_mask=mask), None
        return self.out_proj(out.transpose(1, 2).reshape(n, s, d)), weights

    def cached(self, x: Tensor, position: Tensor, cache: KVCache, layer: int, slot: Tensor, visible: Tensor,
               encoding: Encoding) -> Tensor:
        """One new token x (B, 1, D) at position (B,): its key and value go to the cache's `slot`
        (B,) of this layer, its query attends to the slots `visible` (B, used), the first `used`
        of the cache. Returns (B, 1, D)."""
        b, _, d = x.shape
        q, k, v = self.project(x, position[:, None], encoding)
        rows = torch.arange(b, device=x.device)
        cache.keys[layer][rows, :, slot] = k[:, :, 0]
        cache.values[layer][rows, :, slot] = v[:, :, 0]
        used = visible.shape[1]  # the slots in use by some sequence: the rest need no scores
        keys, values = cache.keys[layer][:, :, :used], cache.values[layer][:, :, :used]
        bias = self.distance_bias(position[:, None], cache.positions[:, :used], encoding)
        out, _ = attend(q, keys, values, visible[:, None, None, :], bias)
        return self.out_proj(out.reshape(b, 1, d))


@dataclass
class KVCache:
    """Every layer's keys and values of B sequences, so that a new token costs one position per
    layer. Slot j holds the j-th oldest token kept; slots past `length` are stale.

    keys, values: per layer (B, H, C, dh); positions (B, C): each slot's position in its
    sequence; length (B,): slots in use; seen (B,): tokens since the sequence started. Without a
    `context` cap C grows by doubling; with one, C = context and a full cache drops its oldest
    token (the banded mask of `over_sequences`, exactly). Mutable: copying C slots at every step
    would cost what the cache saves."""

    keys: list[Tensor]
    values: list[Tensor]
    positions: Tensor
    length: Tensor
    seen: Tensor
    context: int | None = None

    @classmethod
    def empty(cls, batch: int, layers: int, heads: int, head_dim: int, context: int | None = None,
              device: torch.device | None = None) -> KVCache:
        capacity = context or 16
        slots = lambda: torch.zeros(batch, heads, capacity, head_dim, device=device)  # noqa: E731
        counts = lambda: torch.zeros(batch, dtype=torch.long, device=device)  # noqa: E731
        return cls([slots() for _ in range(layers)], [slots() for _ in range(layers)],
                   torch.zeros(batch, capacity, dtype=torch.long, device=device), counts(), counts(), context)

    @property
    def capacity(self) -> int:
        return self.positions.shape[1]

    def restart(self, where: Tensor) -> None:
        """Forget everything of the sequences where `where` (B,) is True: they start anew."""
        self.length = torch.where(where, 0, self.length)
        self.seen = torch.where(where, 0, self.seen)

    def make_room(self) -> Tensor:
        """Free the slot the next token of every sequence goes to, and return it (B,)."""
        if self.context is not None:
            full = self.length == self.context
            if full.any():
                roll = lambda x, dim: torch.where(  # noqa: E731
                    full.view(-1, *[1] * (x.dim() - 1)), x.roll(-1, dims=dim), x)
                self.keys = [roll(k, 2) for k in self.keys]
                self.values = [roll(v, 2) for v in self.values]
                self.positions = roll(self.positions, 1)
                self.length = torch.where(full, self.length - 1, self.length)
        elif int(self.length.max()) == self.capacity:
            grow = lambda x, dim: torch.cat([x, torch.zeros_like(x)], dim=dim)  # noqa: E731
            self.keys = [grow(k, 2) for k in self.keys]
            self.values = [grow(v, 2) for v in self.values]
            self.positions = grow(self.positions, 1)
        return self.length.clone()

    def copy(self) -> KVCache:
        return KVCache([k.clone() for k in self.keys], [v.clone() for v in self.values], self.positions.clone(),
                       self.length.clone(), self.seen.clone(), self.context)


def sequence_visibility(lengths: Tensor, steps: int, context: int | None = None) -> Tensor:
    """(N, S, S) [query, key]: query i sees keys j <= i (within `context` of it) of its sequence's
    first lengths[n] tokens. A padding query sees itself, so no row of the softmax is empty."""
    i = torch.arange(steps, device=lengths.device)
    visible = (i[None, :] <= i[:, None]) & (i[None, :] < lengths[:, None, None])
    if context is not None:
        visible &= i[:, None] - i[None, :] < context
    return visible | torch.eye(steps, dtype=torch.bool, device=lengths.device)


class EncoderLayer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_ff: int) -> None:
        super().__init__()
        self.self_attn = CausalSelfAttention(d_model, n_heads)
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)

    def forward(self, x: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        attended, weights = self.self_attn(x, need_weights)
        return self.feed_forward(x + attended), weights

    def feed_forward(self, x: Tensor) -> Tensor:
        return x + self.linear2(F.relu(self.linear1(x)))

    def over_sequence(self, x: Tensor, positions: Tensor, visible: Tensor, encoding: Encoding,
                      need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        attended, weights = self.self_attn.over_sequence(x, positions, visible, encoding, need_weights)
        return self.feed_forward(x + attended), weights

    def cached(self, x: Tensor, position: Tensor, cache: KVCache, layer: int, slot: Tensor, visible: Tensor,
               encoding: Encoding) -> Tensor:
        return self.feed_forward(x + self.self_attn.cached(x, position, cache, layer, slot, visible, encoding))

    def newest(self, x: Tensor, lengths: Tensor) -> Tensor:
        """This layer's output (N, D) at the newest position only."""
        return self.feed_forward(x[torch.arange(len(x), device=x.device), lengths - 1] + self.self_attn.newest(x, lengths))


class CausalTransformer(nn.Module):
    """Adds sinusoidal positions to embedded inputs (N, W, D) and runs L no-LN layers."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, n_layers: int, max_len: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(d_model, n_heads, d_ff) for _ in range(n_layers))
        self.register_buffer("positions", sinusoidal_positions(max_len, d_model), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_attention(x, need_weights=False)[0]

    def latest(self, x: Tensor, lengths: Tensor) -> Tensor:
        """Final-layer output at the newest position (N, D), for embedded windows x (N, W, D) with
        valid lengths (N,). Equal to forward(x)[n, lengths - 1], but the last layer computes only
        that position (about a sixth fewer FLOPs with 4 layers and W = 5)."""
        x = x + self.positions[: x.shape[1]]
        for layer in self.layers[:-1]:
            x, _ = layer(x)
        return self.layers[-1].newest(x, lengths)

    def over_sequences(self, x: Tensor, lengths: Tensor, encoding: Encoding = "sinusoidal",
                       context: int | None = None, need_weights: bool = False) -> tuple[Tensor, list[Tensor]]:
        """Every position's output (N, S, D) of embedded sequences x (N, S, D) with lengths (N,),
        in one causal pass (positions 0..S-1, each query within `context` of its keys); with
        `need_weights` each layer's attention (N, H, S, S) too."""
        n, steps, d = x.shape
        positions = torch.arange(steps, device=x.device).expand(n, steps)
        if encoding == "sinusoidal":
            x = x + sinusoidal_at(positions[0], d)
        # Sequences are padded at their end, so the plain causal mask keeps every real query to
        # real keys: the full mask is needed only for a context cap or ALiBi's biases.
        plain = context is None and encoding != "alibi"
        visible = None if plain else sequence_visibility(lengths, steps, context)
        attention = []
        for layer in self.layers:
            x, weights = layer.over_sequence(x, positions, visible, encoding, need_weights)
            if weights is not None:
                attention.append(weights)
        return x, attention

    def step(self, x: Tensor, cache: KVCache, encoding: Encoding = "sinusoidal") -> Tensor:
        """The output (B, D) of one new embedded token x (B, D) per sequence, after the tokens in
        `cache`, which takes in its keys and values: equal to `over_sequences` at that position."""
        slot = cache.make_room()
        position = cache.seen
        rows = torch.arange(len(x), device=x.device)
        cache.positions[rows, slot] = position
        if encoding == "sinusoidal":
            x = x + sinusoidal_at(position, x.shape[-1])
        used = int(slot.max()) + 1  # slots past every sequence's newest hold nothing to attend to
        visible = torch.arange(used, device=x.device) <= slot[:, None]  # (B, used)
        h = x[:, None]
        for i, layer in enumerate(self.layers):
            h = layer.cached(h, position, cache, i, slot, visible, encoding)
        cache.length, cache.seen = slot + 1, cache.seen + 1
        return h[:, 0]

    def forward_with_attention(self, x: Tensor, need_weights: bool = True) -> tuple[Tensor, list[Tensor]]:
        """Outputs (N, W, D) and, with `need_weights`, each layer's attention (N, heads, W, W)."""
        x = x + self.positions[: x.shape[1]]
        attention = []
        for layer in self.layers:
            x, weights = layer(x, need_weights)
            if weights is not None:
                attention.append(weights)
        return x, attention


def tfixup_scales(n_layers: int) -> tuple[float, float]:
    """(layer scale 0.67 L^-1/4, embedding scale (9L)^-1/4) of T-Fixup (Huang et al. 2020)."""
    return 0.67 * n_layers**-0.25, (9 * n_layers) ** -0.25


@torch.no_grad()
def initialize(
    embedding: nn.Linear,
    transformer: CausalTransformer,
    variant: Literal["code", "paper", "off"],
    generator: torch.Generator,
) -> None:
    """Xavier-uniform init of every matrix, then T-Fixup.

    Q, K and V are each initialised as their own d x d xavier matrix (the original code's sqrt(2)
    correction of one 3d x d matrix gives the same bound). Attention and output biases are 0; FFN
    biases keep torch's U(+-1/sqrt(fan_in)). With T-Fixup the embedding is N(0, d^-1/2) (9L)^-1/4
    and each layer's scaled matrices are multiplied by 0.67 L^-1/4: 'code' scales Q, K, V,
    out-proj, W1, W2 (the original code); 'paper' leaves Q and K unscaled.
    """
    d_model = embedding.out_features
    layer_scale, embed_scale = tfixup_scales(len(transformer.layers))
    if variant == "off":
        nn.init.xavier_uniform_(embedding.weight, generator=generator)
    else:
        embedding.weight.normal_(0.0, d_model**-0.5, generator=generator).mul_(embed_scale)
    for layer in transformer.layers:
        attn = layer.self_attn
        for block in attn.in_proj.weight.split(d_model):
            nn.init.xavier_uniform_(block, generator=generator)
        nn.init.xavier_uniform_(attn.out_proj.weight, generator=generator)
        attn.in_proj.bias.zero_()
        attn.out_proj.bias.zero_()
        for linear in (layer.linear1, layer.linear2):
            nn.init.xavier_uniform_(linear.weight, generator=generator)
            bound = linear.in_features**-0.5
            linear.bias.uniform_(-bound, bound, generator=generator)
        if variant == "off":
            continue
        q_k_v = attn.in_proj.weight if variant == "code" else attn.in_proj.weight[2 * d_model :]
        for weight in (q_k_v, attn.out_proj.weight, layer.linear1.weight, layer.linear2.weight):
            weight.mul_(layer_scale)
