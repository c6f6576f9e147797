"""TRPO's step (Schulman et al. 2015), algorithm-neutral: maximise a surrogate subject to a mean
KL bound by conjugate gradient on the Fisher-vector product (the Hessian of the KL, by double
backpropagation), a step scaled to the bound, and a backtracking line search that keeps a point
only if it satisfies the bound and improves the surrogate. Imports no network.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from trmrl.errors import DivergenceError

Objective = Callable[[bool], tuple[Tensor, Tensor]]
"""objective(differentiable) -> (surrogate, mean KL) at the parameters' current values; with
`differentiable` False only their values are needed (the line search)."""


def conjugate_gradient(matvec: Callable[[Tensor], Tensor], b: Tensor, iters: int, tol: float = 1e-10) -> Tensor:
    """x with matvec(x) = b for a symmetric positive-definite operator, from x = 0 (at most
    `iters` iterations; stops when the squared residual is below `tol`)."""
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = r @ r
    for _ in range(iters):
        if rr < tol:
            break
        ap = matvec(p)
        alpha = rr / (p @ ap)
        x += alpha * p
        r -= alpha * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


@dataclass(frozen=True)
class TRPOStep:
    """What one step did: surrogate and KL before and after (after = before when rejected),
    the backtracking step taken (-1: rejected) and the size of the full step."""

    surrogate_before: float
    surrogate_after: float
    kl: float
    backtracks: int
    step_norm: float

    @property
    def accepted(self) -> bool:
        return self.backtracks >= 0


def trpo_step(
    params: Sequence[nn.Parameter],
    objective: Objective,
    max_kl: float,
    cg_iters: int = 10,
    cg_damping: float = 1e-5,
    line_search_steps: int = 15,
    line_search_ratio: float = 0.8,
) -> TRPOStep:
    """One TRPO step on `params` (updated in place; left unchanged when no point of the line
    search satisfies KL <= max_kl with a larger surrogate)."""
    params = list(params)
    surrogate, kl = objective(True)
    if not torch.isfinite(surrogate):
        raise DivergenceError(f"the TRPO surrogate is {float(surrogate)}")
    gradient = parameters_to_vector(torch.autograd.grad(surrogate, params, retain_graph=True))
    kl_gradient = parameters_to_vector(torch.autograd.grad(kl, params, create_graph=True))

    def fisher_vector_product(v: Tensor) -> Tensor:
        hv = torch.autograd.grad(kl_gradient @ v, params, retain_graph=True)
        return parameters_to_vector(hv) + cg_damping * v

    direction = conjugate_gradient(fisher_vector_product, gradient, cg_iters)
    curvature = float(direction @ fisher_vector_product(direction))
    # the largest step along `direction` whose quadratic KL model equals the bound
    full_step = math.sqrt(2.0 * max_kl / (curvature + 1e-8)) * direction
    if not torch.isfinite(full_step).all():
        raise DivergenceError("the TRPO step direction is not finite")
    before = parameters_to_vector(params).detach().clone()
    surrogate_before = float(surrogate.detach())
    for backtrack in range(line_search_steps):
        with torch.no_grad():
            vector_to_parameters(before + line_search_ratio**backtrack * full_step, params)
        new_surrogate, new_kl = (float(v) for v in objective(False))
        if new_kl <= max_kl and new_surrogate > surrogate_before:
            return TRPOStep(surrogate_before, new_surrogate, new_kl, backtrack, float(full_step.norm()))
    with torch.no_grad():
        vector_to_parameters(before, params)
    return TRPOStep(surrogate_before, surrogate_before, 0.0, -1, float(full_step.norm()))
