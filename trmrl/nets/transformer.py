"""A causal transformer encoder without LayerNorm, stabilised by T-Fixup. Knows nothing of RL.

Layer (the original code's `TransformerEncoderLayerNoLN`, dropout 0):
    x <- x + MHA(x; causal mask)
    x <- x + W2 relu(W1 x + b1) + b2
"""

from __future__ import annotations

import math
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


def attend(q: Tensor, k: Tensor, v: Tensor, visible: Tensor) -> tuple[Tensor, Tensor]:
    """softmax(q k^T / sqrt(dh)) v over the keys where `visible`; q (N, H, Q, dh), k and v
    (N, H, K, dh), visible broadcastable to (N, H, Q, K). Returns (output, weights).

    Written out rather than through scaled_dot_product_attention: with windows of 5 and head
    dimension 8 the fused CPU kernel was slower (benchmarks/README.md)."""
    scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
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


class EncoderLayer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_ff: int) -> None:
        super().__init__()
        self.self_attn = CausalSelfAttention(d_model, n_heads)
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)

    def forward(self, x: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        attended, weights = self.self_attn(x, need_weights)
        x = x + attended
        return x + self.linear2(F.relu(self.linear1(x))), weights

    def newest(self, x: Tensor, lengths: Tensor) -> Tensor:
        """This layer's output (N, D) at the newest position only."""
        h = x[torch.arange(len(x), device=x.device), lengths - 1] + self.self_attn.newest(x, lengths)
        return h + self.linear2(F.relu(self.linear1(h)))


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
