"""One optimiser step, the same for every learner (PPO's phases, SAC's networks, VariBAD's VAE):
a diverged loss stops the run in one line, and over several processes the step takes the whole
minibatch's gradient."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from trmrl import distributed
from trmrl.errors import DivergenceError


def gradient_step(
    loss: Tensor | None, optimizer: torch.optim.Optimizer, params: Sequence[Tensor], max_grad_norm: float | None,
    what: str, extras: Tensor | None = None, data_parallel: bool = False,
    clip_groups: Sequence[Sequence[Tensor]] | None = None,
) -> Tensor:
    """One optimiser step on `loss`; a non-finite loss is a DivergenceError (the run keeps its
    last good checkpoint) rather than a silent NaN in the weights. Returns [loss, *extras].

    `data_parallel`: `loss` is this process's share of a minibatch's loss (None: it holds no row
    of it); the gradients, the loss and `extras` are summed over the processes in one all-reduce
    before clipping, so every process steps on the whole minibatch's gradient and all of them
    stop alike on a non-finite loss. The returned numbers are the sums.

    `clip_groups`: parts of `params` whose gradient norms are clipped to `max_grad_norm` each
    (VariBAD's encoder and decoders); default: all of `params` as one."""
    numbers = torch.zeros(1) if loss is None else loss.detach().reshape(1).cpu()
    if extras is not None:
        numbers = torch.cat([numbers, extras.detach().reshape(-1).cpu()])
    if not data_parallel:
        assert loss is not None
        if not torch.isfinite(loss):
            raise DivergenceError(f"non-finite {what} loss ({loss.item()})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
    else:
        optimizer.zero_grad(set_to_none=True)
        if loss is not None:
            loss.backward()
        numbers = distributed.sum_gradients(params, numbers)
        if not torch.isfinite(numbers[0]):
            raise DivergenceError(f"non-finite {what} loss ({numbers[0].item()}) in a process of the run")
    if max_grad_norm is not None:
        for group in clip_groups or [params]:
            torch.nn.utils.clip_grad_norm_(group, max_grad_norm)
    optimizer.step()
    return numbers
