"""The linear feature baseline of Duan et al. (2016), as rllab, garage and ProMP fit it: a ridge
regression of the discounted return on features of the input and of time, refitted on every
batch. MAML-TRPO fits one per task and round; RL^2 (`rl2.baseline linear`) one per epoch over
whole trials, as garage's RL2 does."""

from __future__ import annotations

import torch
from torch import Tensor


def steps_since_start(starts: Tensor) -> Tensor:
    """t within the current episode (or trial) at every step of (T, B) start flags: (T, B) long."""
    index = torch.arange(len(starts))[:, None].expand_as(starts)
    last_start = torch.where(starts, index, 0).cummax(0).values
    return index - last_start


def baseline_features(states: Tensor, t: Tensor) -> Tensor:
    """Duan et al.'s linear-baseline features [s, s^2, t, t^2, t^3, 1] with s clipped to [-10, 10]
    and t in hundreds of steps: states (..., S), t (...) -> (..., 2 S + 4)."""
    s = states.clamp(-10.0, 10.0)
    u = t.to(states.dtype)[..., None] / 100.0
    return torch.cat([s, s * s, u, u * u, u**3, torch.ones_like(u)], dim=-1)


def fit_linear_baseline(features: Tensor, targets: Tensor, reg: float) -> Tensor:
    """Ridge regression per group: features (G, N, F), targets (G, N) -> coefficients (G, F), in
    float64; the ridge grows tenfold (up to 5 times) while the solution is not finite."""
    x, y = features.double(), targets.double()
    gram, moment = x.transpose(1, 2) @ x, (x.transpose(1, 2) @ y[..., None])[..., 0]
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    for _ in range(5):
        coefficients = torch.linalg.solve(gram + reg * eye, moment)
        if torch.isfinite(coefficients).all():
            break
        reg *= 10
    return coefficients
