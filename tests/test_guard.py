"""Regression guard: TrMRL's numbers pinned on two tiny configs (point-nav and cheetah-vel, two
epochs, one thread). Every rollout the run collects (training and meta-test), the parameters
after the updates and the meta-test returns are compared with a stored fixture.

A change that is meant to alter the numbers regenerates the fixture, in a commit of its own that
says why:

    TRMRL_REGENERATE_GUARD=1 pytest tests/test_guard.py

Float kernels differ between CPU instruction sets, so the comparison is exact on a CPU with the
fixture's capability and to a small tolerance on others.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch

from trmrl import checkpoint
from trmrl.presets import get_preset
from trmrl.sampler import TrialSampler
from trmrl.train import train
from trmrl.trial import forget_previous_episode

FIXTURE = Path(__file__).parent / "fixtures" / "guard.pt"
ROLLOUT_FIELDS = ("obs", "actions", "log_probs", "values", "rewards", "episode_start", "trial_start", "episode_end",
                  "terminated", "trial_end", "bootstrap_values")


def guard_config(preset: str):
    """The preset shrunk to two epochs of a tiny model; cheetah-vel decays its policy LR from the
    first epoch so that the schedule is pinned too."""
    config = get_preset(preset)
    task = dataclasses.replace(config.task, tasks_per_epoch=4 if preset == "point-nav" else 2,
                               max_episode_steps=5 if preset == "point-nav" else 10)
    model = dataclasses.replace(config.model, d_model=16, n_heads=2, d_ff=32, n_layers=2)
    ppo = dataclasses.replace(config.ppo, update_epochs=2, minibatch_size=16)
    if preset == "cheetah-vel":
        ppo = dataclasses.replace(ppo, decay_epoch_start=0, decay_epoch_end=3, min_lr_factor=0.5)
    evaluation = dataclasses.replace(config.eval, every_epochs=1, n_tasks=3, episodes=2, final_n_tasks=3,
                                     final_episodes=3)
    return dataclasses.replace(config, seed=5, total_env_steps=2 * task.tasks_per_epoch * task.steps_per_trial,
                               task=task, model=model, ppo=ppo, eval=evaluation, progress=False, torch_threads=1)


def record(preset: str, run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Everything the run computes, as tensors."""
    rollouts = []
    collect = TrialSampler.collect
    config = guard_config(preset)

    def recording(self, *args, **kwargs):
        rollout = collect(self, *args, **kwargs)
        fields = {name: getattr(rollout, name).clone() for name in ROLLOUT_FIELDS}
        if config.model.memory_scope == "episode":  # the inputs as the policy saw them
            fields["obs"] = forget_previous_episode(fields["obs"], rollout.episode_start, self.act_dim)
        rollouts.append(fields)
        return rollout

    monkeypatch.setattr(TrialSampler, "collect", recording)
    summary = train(config, run_dir)
    monkeypatch.undo()
    return {
        "rollouts": rollouts,
        "parameters": checkpoint.load(run_dir / "checkpoint.pt")["model"],
        "meta_test": torch.tensor([summary["return_per_episode"], summary["random_return_per_episode"]]),
    }


def assert_same(actual, expected, exact: bool, where: str) -> None:
    if isinstance(expected, dict):
        assert sorted(actual) == sorted(expected), where
        for key in expected:
            assert_same(actual[key], expected[key], exact, f"{where}.{key}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), f"{where}: {len(actual)} entries, fixture has {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same(a, e, exact, f"{where}[{i}]")
    elif exact or expected.dtype == torch.bool:
        assert torch.equal(actual, expected), f"{where} differs from the fixture"
    else:
        assert torch.allclose(actual, expected, rtol=1e-4, atol=1e-4), f"{where} differs from the fixture"


@pytest.mark.parametrize("preset", ["point-nav", "cheetah-vel"])
def test_numbers_match_the_fixture(preset, tmp_path, monkeypatch):
    actual = record(preset, tmp_path, monkeypatch)
    capability = torch.backends.cpu.get_cpu_capability()
    if os.environ.get("TRMRL_REGENERATE_GUARD"):
        stored = torch.load(FIXTURE) if FIXTURE.exists() else {}
        stored[preset] = actual
        stored["cpu_capability"] = capability
        FIXTURE.parent.mkdir(exist_ok=True)
        torch.save(stored, FIXTURE)
        pytest.skip("fixture regenerated")
    fixture = torch.load(FIXTURE)
    assert_same(actual, fixture[preset], exact=fixture["cpu_capability"] == capability, where=preset)
