"""Regression guard: each algorithm's numbers pinned on tiny runs (one thread). Every rollout the
run collects (training and meta-test), the parameters after the updates and the meta-test returns
are compared with a stored fixture: TrMRL on two configs (point-nav and cheetah-vel, two epochs,
`fixtures/guard.pt`), RL^2, VariBAD, MAML-TRPO and PEARL on point-nav (`fixtures/guard-<algo>.pt`,
with the run's logged losses too).

What moves them: a change to what an algorithm computes (its networks, initialisation, losses,
update order, random draws) or to shared code it runs through (the sampler, the trial envs, PPO,
the evaluator, the seeding of the streams). A refactor must leave them equal. A change that is
meant to alter the numbers regenerates the fixtures it moves, in a commit of its own that says why:

    TRMRL_REGENERATE_GUARD=1 pytest tests/test_guard.py            # every fixture
    TRMRL_REGENERATE_GUARD=1 pytest tests/test_guard.py -k rl2     # one algorithm's

Float kernels round differently on different CPUs, even of one instruction set (an AMD EPYC with
AVX-512 differs from the Intel one that wrote `guard.pt` by about 1e-7), so the comparison is
exact on the CPU model that wrote a fixture and to a small tolerance (1e-4) on others.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from pathlib import Path

import pytest
import torch

from trmrl import checkpoint
from trmrl.log import read_metrics
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


def cpu() -> str:
    """The CPU a fixture is exact on: torch's instruction-set level and the model name."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return f"{torch.backends.cpu.get_cpu_capability()} {model}"


def assert_same(actual, expected, exact: bool, where: str) -> None:
    if isinstance(expected, dict):
        assert sorted(actual) == sorted(expected), where
        for key in expected:
            assert_same(actual[key], expected[key], exact, f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), f"{where}: {len(actual)} entries, fixture has {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same(a, e, exact, f"{where}[{i}]")
    elif isinstance(expected, float) and not exact:  # a logged number
        assert actual == pytest.approx(expected, rel=1e-4, abs=1e-4, nan_ok=True), where
    elif not isinstance(expected, torch.Tensor):  # a count, a setting
        assert actual == expected or (actual != actual and expected != expected), where
    elif exact or expected.dtype == torch.bool:
        assert torch.equal(actual, expected), f"{where} differs from the fixture"
    else:
        assert torch.allclose(actual, expected, rtol=1e-4, atol=1e-4), f"{where} differs from the fixture"


def references(file: Path) -> dict[str, dict]:
    """A fixture file's numbers by the CPU that wrote them ({cpu(): {name: numbers}}); a file of
    the first layout ({name: numbers, "cpu_capability": ...}) holds one unnamed CPU's."""
    if not file.exists():
        return {}
    stored = torch.load(file)
    if "by_cpu" in stored:
        return stored["by_cpu"]
    capability = stored.pop("cpu_capability")
    return {f"{capability} (the CPU that wrote the first fixture)": stored}


def check_against_fixture(name: str, actual: dict, file: Path) -> None:
    """Exact against the numbers this CPU wrote; on a CPU that wrote none, within 1e-4 of one of
    the CPUs' numbers. TRMRL_REGENERATE_GUARD=1 (re)writes this CPU's entry, keeping the others."""
    stored = references(file)
    if os.environ.get("TRMRL_REGENERATE_GUARD"):
        stored.setdefault(cpu(), {})[name] = actual
        file.parent.mkdir(exist_ok=True)
        torch.save({"by_cpu": stored}, file)
        pytest.skip("fixture regenerated")
    candidates = {key: entries[name] for key, entries in stored.items() if name in entries}
    assert candidates, f"{file.name} holds no numbers for {name}: regenerate it (module docstring)"
    if cpu() in candidates:
        assert_same(actual, candidates[cpu()], exact=True, where=name)
        return
    failures = []
    for key, expected in candidates.items():
        try:
            assert_same(actual, expected, exact=False, where=name)
            return
        except AssertionError as exc:
            failures.append(f"against {key}: {str(exc).splitlines()[0]}")
    raise AssertionError(f"no CPU's numbers match on {cpu()}: " + "; ".join(failures))


@pytest.mark.parametrize("preset", ["point-nav", "cheetah-vel"])
def test_numbers_match_the_fixture(preset, tmp_path, monkeypatch):
    check_against_fixture(preset, record(preset, tmp_path, monkeypatch), FIXTURE)


def baseline_config(algo: str):
    """The algorithm's point-nav preset shrunk to two or three iterations of tiny networks."""
    ppo = {"update_epochs": 2, "minibatch_size": 16} if algo in ("rl2", "varibad") else {}
    config = get_preset("point-nav", algo).replace(
        seed=5, progress=False, torch_threads=1, checkpoint_every=1,
        task={"max_episode_steps": 5, "tasks_per_epoch": 4}, ppo=ppo,
        eval={"every_epochs": 1, "n_tasks": 3, "episodes": 2, "final_n_tasks": 3, "final_episodes": 3})
    if algo == "rl2":
        config = config.replace(rl2={"hidden_size": 8, "bptt_chunk": 4})
    elif algo == "varibad":
        config = config.replace(
            varibad={"gru_hidden": 8, "state_embedding": 4, "action_embedding": 4, "reward_embedding": 4,
                     "reward_decoder": (8,), "policy_state_embedding": 4, "policy_latent_embedding": 4,
                     "policy_hidden": (8,), "vae_buffer": 8, "vae_batch": 3, "subsample_elbos": 4,
                     "subsample_decodes": 5})
    elif algo == "maml":
        config = config.replace(maml={"hidden_sizes": (8, 8), "rollouts_per_task": 2}, task={"tasks_per_epoch": 3})
    elif algo == "pearl":
        config = config.replace(pearl={"n_train_tasks": 6, "latent_size": 3, "net_size": 8, "encoder_hidden": (8,),
                                       "initial_steps": 20, "tasks_per_iteration": 2, "prior_steps": 10,
                                       "extra_posterior_steps": 10, "gradient_steps": 6, "meta_batch": 4,
                                       "batch_size": 8, "context_batch": 5})
    return config.replace(total_env_steps=2 * config.steps_per_epoch)


def record_baseline(algo: str, run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Every rollout, the parameters and optimiser states, the logged losses and the meta-tests."""
    rollouts = []
    collect = TrialSampler.collect

    def recording(self, *args, **kwargs):
        rollout = collect(self, *args, **kwargs)
        rollouts.append({name: getattr(rollout, name).clone() for name in ROLLOUT_FIELDS})
        return rollout

    monkeypatch.setattr(TrialSampler, "collect", recording)
    summary = train(baseline_config(algo), run_dir)
    monkeypatch.undo()
    state = checkpoint.load(run_dir / "checkpoint.pt")
    losses = [{k: v for k, v in r.items() if k.startswith("losses/")} for r in read_metrics(run_dir)]
    return {
        "rollouts": rollouts,
        "state": {k: v for k, v in state.items() if k not in ("config", "epoch", "env_steps")},
        "losses": [r for r in losses if r],
        "meta_test": torch.tensor([summary["return_per_episode"], summary["random_return_per_episode"]]),
    }


@pytest.mark.parametrize("algo", ["rl2", "varibad", "maml", "pearl"])
def test_baseline_numbers_match_their_fixture(algo, tmp_path, monkeypatch):
    actual = record_baseline(algo, tmp_path, monkeypatch)
    assert actual["rollouts"] and actual["losses"]  # the run collected and updated
    check_against_fixture(algo, actual, FIXTURE.with_name(f"guard-{algo}.pt"))
