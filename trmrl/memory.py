"""The window: the last W working-memory inputs of each trial, left-aligned as in the original
code. Slot j holds the j-th oldest input since the window was last cleared; slots past the
valid length hold `pad_value` (the causal mask keeps them out of the newest position):

    steps since clear      1            3               >= W (here W = 4)
    slots               [x0 p  p  p ] [x0 x1 x2 p ]   [x_{t-3} x_{t-2} x_{t-1} x_t]
    length                 1            3               4

The window stores raw augmented observations; the policy embeds them (one linear map), so the
update can rebuild every window exactly from the stored inputs (`gather_windows`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Window:
    """Sliding windows of B trials at once: buffer (B, W, O), valid lengths (B,). Immutable:
    `push` returns the next window, so the sampler can carry it as the policy's state and a value
    can be read for a hypothetical input without touching it."""

    buffer: Tensor
    length: Tensor
    pad_value: float = 0.0

    @classmethod
    def empty(cls, batch: int, window: int, dim: int, pad_value: float = 0.0,
              device: torch.device | None = None) -> Window:
        return cls(torch.full((batch, window, dim), pad_value, device=device),
                   torch.zeros(batch, dtype=torch.long, device=device), pad_value)

    @property
    def window(self) -> int:
        return self.buffer.shape[1]

    def push(self, x: Tensor, clear: Tensor | None = None) -> Window:
        """Empty the windows where `clear` (B,) is True, then append one input (B, O) to every
        window, dropping the oldest from full ones."""
        buffer, length = self.buffer, self.length
        if clear is not None and clear.any():
            buffer = torch.where(clear[:, None, None], self.pad_value, buffer)
            length = torch.where(clear, 0, length)
        full = length == self.window
        # torch.where returns a new tensor, so writing the new input leaves self.buffer intact
        buffer = torch.where(full[:, None, None], buffer.roll(-1, dims=1), buffer)
        slot = length.clamp(max=self.window - 1)
        buffer[torch.arange(len(x), device=x.device), slot] = x
        return Window(buffer, (length + 1).clamp(max=self.window), self.pad_value)


def gather_windows(inputs: Tensor, clears: Tensor, window: int, pad_value: float = 0.0) -> tuple[Tensor, Tensor]:
    """Rebuild every step's window from a rollout's inputs.

    inputs: (T, B, O) augmented observations; clears: (T, B) True where the window was cleared
    just before step t's input was pushed (step 0 always counts as cleared).
    Returns windows (T, B, W, O) and lengths (T, B), identical to what `Window` held when the
    sampler acted at each step.
    """
    steps, batch, _ = inputs.shape
    device = inputs.device
    t = torch.arange(steps, device=device)[:, None].expand(steps, batch)
    cleared_at = torch.where(clears, t, torch.zeros_like(t)).cummax(dim=0).values
    start = torch.maximum(t - window + 1, cleared_at)
    length = t - start + 1
    slots = torch.arange(window, device=device)
    index = (start[..., None] + slots).clamp(max=t[..., None])  # (T, B, W)
    windows = inputs[index, torch.arange(batch, device=device)[None, :, None]]
    valid = slots < length[..., None]
    windows = torch.where(valid[..., None], windows, torch.full_like(windows, pad_value))
    return windows, length
