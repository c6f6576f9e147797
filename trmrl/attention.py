"""Which past working memories the agent attends to as it adapts: the attention of the newest
position over the window, per layer, for every step of one trial."""

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


def save_attention(model: ActorCritic, rollout: Rollout, windows: torch.Tensor, lengths: torch.Tensor, task: Task,
                   out_dir: Path) -> list[Path]:
    """attention.npz and attention.png of one trial of `task` (`rollout` with one env; windows
    (T, 1, W, O) and lengths (T, 1): what the policy held at each step)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weights = attention_by_age(model, windows[:, 0], lengths[:, 0])  # (T, L, H, W)
    out_dir.mkdir(parents=True, exist_ok=True)
    npz = out_dir / "attention.npz"
    np.savez(npz, weights=weights, lengths=lengths[:, 0].numpy(), rewards=rollout.rewards[:, 0].numpy(),
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
