"""TrMRL meta-learns point-nav: it reaches a stated return on held-out tasks and clearly beats
the same agent with a window of one working memory (W = 1), which cannot locate the goal."""

import dataclasses

import numpy as np
import pytest

from trmrl.presets import get_preset
from trmrl.train import train


def run(tmp_path, window: int, total_env_steps: int) -> dict:
    config = get_preset("point-nav")
    config = dataclasses.replace(
        config, total_env_steps=total_env_steps, progress=False, torch_threads=1,
        model=dataclasses.replace(config.model, window=window),
        eval=dataclasses.replace(config.eval, every_epochs=0),
    )
    return train(config, tmp_path / f"w{window}")


def check(tmp_path, total_env_steps: int, threshold: float, margin: float) -> None:
    memory = run(tmp_path, 5, total_env_steps)
    memoryless = run(tmp_path, 1, total_env_steps)
    trmrl_return = np.mean(memory["return_per_episode"])
    w1_return = np.mean(memoryless["return_per_episode"])
    random_return = np.mean(memory["random_return_per_episode"])
    assert trmrl_return > threshold, (trmrl_return, w1_return, random_return)
    assert trmrl_return > w1_return + margin, (trmrl_return, w1_return)
    assert w1_return > random_return, (w1_return, random_return)


def test_trmrl_meta_learns_point_nav(tmp_path):
    check(tmp_path, total_env_steps=256_000, threshold=-12.0, margin=2.0)


@pytest.mark.slow
def test_trmrl_meta_learns_point_nav_full_budget(tmp_path):
    # the preset's full budget; measured with seed 1: W = 5 -7.8, W = 1 -11.5, random -20.2
    check(tmp_path, total_env_steps=400_000, threshold=-9.0, margin=2.5)
