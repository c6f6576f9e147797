"""Which past working memories the agent attends to as it adapts: the attention of the newest
position over the window (or, with 'whole' memory, over everything since the last clear), per
layer, for every step of one trial."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from trmrl.nets.policy import ActorCritic
from trmrl.rollout import Rollout
from trmrl.tasks import Task


@torch.no_grad()
def attention_by_age(model: ActorCritic, windows: torch.Tensor, lengths: torch.Tensor) -> np.ndarray:
    """windows (N, W, O), lengths (N,) -> (N, layers, heads, W): attention of the newest
    position to the memory of age a (0 = newest, 1 = one step earlier, ...); NaN beyond the
    valid length."""
    _, attention = model.transformer.forward_with_attention(model.embedding(windows))
    n, w = windows.shape[:2]
    newest = torch.stack([a[torch.arange(n), :, lengths - 1] for a in attention], dim=1)  # (N, L, H, W slots)
    ages = torch.arange(w)
    slot = (lengths[:, None] - 1 - ages).clamp(min=0)  # (N, W): the slot holding the memory of each age
    by_age = newest.gather(3, slot[:, None, None, :].expand_as(newest))
    valid = ages[None, :] < lengths[:, None]
    return torch.where(valid[:, None, None, :], by_age, torch.nan).numpy()


@torch.no_grad()
def sequence_attention_by_age(model: ActorCritic, inputs: torch.Tensor, lengths: torch.Tensor) -> np.ndarray:
    """'whole' memory: sequences of inputs (S, L, O) with lengths (S,) -> (S, L, layers, heads, L):
    the attention of the step at each position to the memory of age a, from one causal pass; NaN
    where no memory of that age exists (and at padding)."""
    c = model.config
    _, attention = model.transformer.over_sequences(model.embedding(inputs), lengths, c.positions, c.context,
                                                    need_weights=True)
    steps = inputs.shape[1]
    query = torch.arange(steps)[:, None]
    ages = torch.arange(steps)[None, :]
    key = (query - ages).clamp(min=0)  # (L queries, L ages): the key position holding each age
    weights = torch.stack(attention, dim=2).permute(0, 3, 2, 1, 4)  # (S, L queries, layers, H, L keys)
    by_age = weights.gather(4, key[None, :, None, None, :].expand_as(weights))
    exists = (ages <= query)[None] & (query < lengths[:, None, None])  # (S, L, L)
    return torch.where(exists[:, :, None, None, :], by_age, torch.nan).numpy()


def save_attention(weights: np.ndarray, lengths: np.ndarray, rollout: Rollout, task: Task, out_dir: Path) -> list[Path]:
    """attention.npz and attention.png of one trial of `task` (`rollout` with one env): weights
    (T, layers, heads, ages) as `attention_by_age` gives them and the number of memories the
    policy held at each step, lengths (T,)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    npz = out_dir / "attention.npz"
    np.savez(npz, weights=weights, lengths=lengths, rewards=rollout.rewards[:, 0].numpy(),
             episode_start=rollout.episode_start[:, 0].numpy(), task=np.array(task.params))
    mean_heads = weights.mean(axis=2)  # (T, L, W); NaN beyond the valid length in every head alike
    layers = mean_heads.shape[1]
    fig, axes = plt.subplots(1, layers, figsize=(2.2 * layers + 1, 4.5), sharey=True, squeeze=False)
    starts = np.flatnonzero(rollout.episode_start[:, 0].numpy())
    for layer, ax in enumerate(axes[0]):
        image = ax.imshow(mean_heads[:, layer], aspect="auto", interpolation="nearest", vmin=0, vmax=1, cmap="viridis")
        for s in starts[1:]:
            ax.axhline(s - 0.5, color="white", lw=0.8, ls="--")
        ax.set_title(f"layer {layer + 1}")
        ax.set_xlabel("memory age (steps ago)")
    axes[0][0].set_ylabel("step in trial (dashed: new episode)")
    fig.colorbar(image, ax=axes[0].tolist(), label="attention of the newest memory (mean over heads)")
    fig.suptitle(f"attention over one trial, task {task.name} {', '.join(f'{x:.2f}' for x in task.params)}")
    png = out_dir / "attention.png"
    fig.savefig(png, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return [npz, png]
