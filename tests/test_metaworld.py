"""MetaWorld through the task seam: held-out goals and classes, the hidden goal, success at any
step counted per env and episode, 10 x 500-step trials, and a short run on a class subset.
Needs the `metaworld` extra (the README's test command installs it); skipped where it is not
installed at all (an installed but broken one fails)."""

import importlib.util
import json

import numpy as np
import pytest
import torch

from trmrl import tasks
from trmrl.algos import make_config
from trmrl.config import EvalConfig, PPOConfig, TaskConfig
from trmrl.errors import ConfigError
from trmrl.evaluate import EvalProtocol, MetaTester, resolve_protocol
from trmrl.nets.policy import ModelConfig
from trmrl.plot import plot_runs
from trmrl.protocols import Step
from trmrl.tasks import make_task_distribution
from trmrl.tasks.metaworld import custom
from trmrl.train import train
from trmrl.trial import TrialEnv

pytestmark = pytest.mark.skipif(importlib.util.find_spec("metaworld") is None,
                                reason="needs the metaworld extra: pip install 'trmrl[metaworld]'")

# ML1 reach-v3 built with seed 1 by metaworld 3.1.1: the object and goal of its first train goal
FIRST_TRAIN_GOAL = (-0.0591096, 0.6878117, 0.02, 0.0340935, 0.8417305, 0.1896725)


@pytest.fixture(scope="module")
def reach():
    return make_task_distribution("ml1/reach-v3", seed=1)


def test_ml1_goals_are_seeded_and_held_out(reach):
    train_goals, test_goals = reach.tasks("train"), reach.tasks("test")
    assert len(train_goals) == len(test_goals) == 50
    assert np.allclose(train_goals[0].params, FIRST_TRAIN_GOAL, atol=1e-6)
    assert not {t.params for t in train_goals} & {t.params for t in test_goals}
    draw = reach.sample(np.random.default_rng(7), 25, "train")
    assert draw == reach.sample(np.random.default_rng(7), 25, "train")
    assert draw != reach.sample(np.random.default_rng(8), 25, "train")
    assert len({t.params for t in draw}) == 25  # 25 of the 50 goals, none twice
    assert {t.params for t in reach.sample(np.random.default_rng(0), 10, "test")} <= {t.params for t in test_goals}


def test_goal_is_hidden_from_the_observation(reach):
    env = reach.make_env()
    observations = []
    for task in reach.tasks("test")[:3]:
        env.set_task(task)
        obs, _ = env.reset(seed=0)
        observations.append(obs)
        assert obs.shape == (39,) and np.all(obs[36:] == 0.0)
        assert not np.isclose(obs[None, :], np.array(task.params[3:])[:, None]).all(axis=0).any()
    # the goals differ between tasks; at reset only the object's position (reach's rand_vec[:3],
    # in the current and the previous frame) tells the observations apart
    differs = {int(i) for a in observations[1:] for i in np.flatnonzero(~np.isclose(a, observations[0]))}
    assert differs and differs <= {4, 5, 6, 22, 23, 24}


def reach_then_leave(hand: torch.Tensor, goal: torch.Tensor, t: int, reach_steps: int = 60) -> torch.Tensor:
    """Move the hand to the goal for `reach_steps` steps, then straight up and away."""
    action = torch.zeros(4)
    if t < reach_steps:
        action[:3] = torch.clamp((goal - hand) * 100.0, -1.0, 1.0)
    else:
        action[:3] = torch.tensor([0.0, -1.0, 1.0])
    return action


class OneEnvReaches:
    """The first `envs` envs (default 1) play `reach_then_leave`; every other env holds still. True
    success rate: `envs` of n envs, every episode; and the last step is not a success, so only
    counting success at *any* step sees it."""

    def __init__(self, goal, envs=1):
        self.goal = torch.tensor(goal, dtype=torch.float32)
        self.envs = envs

    def initial_state(self, n):
        return torch.zeros(n, dtype=torch.long)  # the step within the episode

    def act(self, inputs, state, starts, generators, deterministic=False):
        t = torch.where(starts.episode, 0, state)
        actions = torch.zeros(len(inputs), 4)
        for b in range(min(self.envs, len(inputs))):
            actions[b] = reach_then_leave(inputs[b, :3], self.goal, int(t[b]))
        return Step(actions, torch.zeros(len(inputs)), torch.zeros(len(inputs))), t + 1

    def value(self, inputs, state, starts):
        return torch.zeros(len(inputs))


@pytest.mark.parametrize("vector_env", ["sync", "async"])
def test_success_counted_per_env_at_any_step(reach, vector_env):
    protocol = EvalProtocol("adaptation", n_tasks=10, episodes=2)
    tester = MetaTester(reach, protocol, max_episode_steps=100, seed=0, vector_env=vector_env)
    first = tester.tasks()[0]
    try:
        result = tester.run(OneEnvReaches(first.params[3:]))
    finally:
        tester.close()
    # hand count: env 0 succeeds in both episodes, the nine others never
    expected = np.zeros((10, 2))
    expected[0] = 1.0
    assert np.array_equal(result.successes, expected)
    assert [row["success_rate"] for row in result.per_episode()] == [0.1, 0.1]
    # (metaworld 3.1.1's helper counts the first episodes per class name, here env 0's: 1.0)

    env = TrialEnv(reach.make_env(), 1, 100, task=first)
    obs, _ = env.reset(seed=0)
    flags = []
    for t in range(100):
        action = reach_then_leave(torch.as_tensor(obs[:3]), torch.tensor(first.params[3:]), t)
        obs, _, _, _, info = env.step(action.numpy())
        flags.append(info["success"])
    assert any(flags) and not flags[-1]


def test_switching_classes_keeps_one_simulator_and_replays_exactly():
    from trmrl.tasks.metaworld import ENVS_PER_CLASS_CACHE

    dist = custom(["reach-v3", "push-v3"], ["door-open-v3"], seed=2)
    reach_task, push_task = (next(t for t in dist.tasks("train") if t.name == n) for n in ("reach-v3", "push-v3"))
    env, fresh = dist.make_env(), dist.make_env()
    firsts = []
    for task in (reach_task, push_task, reach_task):
        env.set_task(task)
        firsts.append(env.reset(seed=0)[0])
        assert len(env._envs) == ENVS_PER_CLASS_CACHE == 1
    fresh.set_task(reach_task)
    assert np.array_equal(firsts[0], firsts[2]) and np.array_equal(firsts[2], fresh.reset(seed=0)[0])
    assert not np.array_equal(firsts[0], firsts[1])
    env.close(), fresh.close()


def test_trials_of_ten_500_step_episodes(reach):
    env = TrialEnv(reach.make_env(), episodes_per_trial=10, max_episode_steps=500, task=reach.tasks("train")[3])
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    ends, indices = [], []
    for t in range(5000):
        obs, _, terminated, truncated, info = env.step(rng.uniform(-1, 1, 4))
        indices.append(info["episode_index"])
        if info["episode_end"]:
            ends.append(t)
        assert terminated is False and truncated == (t == 4999)
        if t in (499, 999):
            assert obs[-1] == 1.0  # the next step starts a new episode of the same trial
    assert ends == list(range(499, 5000, 500))
    assert indices[0] == 0 and indices[-1] == 9


@pytest.mark.parametrize("remembered", ["applied", "sampled"])
def test_the_memory_sees_the_applied_or_the_sampled_action(reach, remembered):
    dist = make_task_distribution("ml1/reach-v3", seed=1, remembered_action=remembered)
    env = TrialEnv(dist.make_env(), episodes_per_trial=2, max_episode_steps=3, task=dist.tasks("train")[0])
    twin = TrialEnv(reach.make_env(), episodes_per_trial=2, max_episode_steps=3, task=dist.tasks("train")[0])
    env.reset(seed=0), twin.reset(seed=0)
    action = np.array([2.0, -3.0, 0.5, 0.0])  # metaworld applies it clipped to [-1, 1]
    obs, reward, *_ = env.step(action)
    applied = np.clip(action, -1.0, 1.0)
    assert np.allclose(obs[39:43], action if remembered == "sampled" else applied)
    twin_obs, twin_reward, *_ = twin.step(applied)  # the simulator saw the same applied action
    assert np.array_equal(obs[:39], twin_obs[:39]) and reward == twin_reward
    with pytest.raises(ConfigError, match="remembered_action must be 'applied' or 'sampled'"):
        make_task_distribution("ml1/reach-v3", seed=1, remembered_action="clipped")


def test_metaworld_presets_remember_the_sampled_action_and_measure_as_the_paper():
    from trmrl.presets import PRESETS

    for name in ("ml1-reach", "ml1-push", "ml1-pick-place", "ml10", "ml45"):
        config = PRESETS[name][1]
        assert config.task.remembered_action == "sampled" and config.eval.also == ("paper-metaworld",)
    protocol = resolve_protocol("paper-metaworld", "ml1/reach-v3")
    assert (protocol.n_tasks, protocol.trials_per_task, protocol.episodes, protocol.deterministic) == (10, 10, 1, False)


def test_the_papers_measurement_counts_one_episode_trials_with_sampled_actions(reach):
    """paper-metaworld: held-out goals x 10 trials of one episode, sampled actions, success at any
    step: a hand that reaches its goal in every trial of task 0 only (5 tasks here: the 50 trials
    step as one batch) reads 0.2."""
    protocol = resolve_protocol("paper-metaworld", "ml1/reach-v3", n_tasks=5)
    assert (protocol.trials_per_task, protocol.episodes, protocol.deterministic) == (10, 1, False)
    tester = MetaTester(reach, protocol, max_episode_steps=100, seed=0)
    first = tester.tasks()[0]
    try:
        result = tester.run(OneEnvReaches(first.params[3:], envs=10))  # the 10 trials of task 0: envs 0-9
    finally:
        tester.close()
    assert result.successes.shape == (5, 10) and result.successes[0].all() and not result.successes[1:].any()
    assert result.summary()["success_rate"] == pytest.approx(0.2)
    assert result.summary_metrics("meta_test/paper-metaworld") == {
        "meta_test/paper-metaworld/return": pytest.approx(result.returns.mean()),
        "meta_test/paper-metaworld/success": pytest.approx(0.2)}


def test_metaworld_errors_are_one_line(monkeypatch):
    import sys

    from trmrl.errors import MissingDependencyError
    from trmrl.tasks import metaworld as mw

    real_version = mw.metadata.version
    monkeypatch.setattr(mw.metadata, "version", lambda name: "3.4.0" if name == "mujoco" else real_version(name))
    with pytest.raises(MissingDependencyError, match=r"needs mujoco==3\.3\.0, found 3\.4\.0: pip install mujoco==3\.3\.0"):
        make_task_distribution("ml10")
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "metaworld", None)  # as if the extra were not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'trmrl\[metaworld\]'"):
        make_task_distribution("ml1/reach-v3")
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="unknown MetaWorld class 'nope-v3'"):
        make_task_distribution("ml1/nope-v3")
    with pytest.raises(ConfigError, match="disjoint"):
        custom(["reach-v3"], ["reach-v3"])
    with pytest.raises(ConfigError, match="held-out task list"):
        MetaTester(make_task_distribution("point-nav"), resolve_protocol("metaworld", "point-nav"), 5, seed=0)


def test_short_run_on_a_class_subset_reports_success_per_held_out_class(tmp_path):
    tasks.register("metaworld-smoke", lambda seed=0, reward_function_version="v2", remembered_action="applied": custom(
        ["reach-v3", "push-v3"], ["door-open-v3", "drawer-close-v3"], seed, reward_function_version, remembered_action),
        options=("seed", "reward_function_version", "remembered_action"), replace=True)
    config = make_config(
        preset="metaworld-smoke", total_env_steps=160, seed=3, progress=False,
        task=TaskConfig(name="metaworld-smoke", episodes_per_trial=2, max_episode_steps=10, tasks_per_epoch=4,
                        remembered_action="sampled"),
        model=ModelConfig(d_model=16, n_heads=2, d_ff=32, n_layers=1, window=3, init_std=1.0, output_weights_scale=0.01),
        ppo=PPOConfig(update_epochs=1, minibatch_size=40),
        eval=EvalConfig(every_epochs=1, n_tasks=4, episodes=2, final_n_tasks=4, final_episodes=2),
    )
    dist = make_task_distribution("metaworld-smoke", seed=3)
    for split, classes in (("train", ["reach-v3", "push-v3"]), ("test", ["door-open-v3", "drawer-close-v3"])):
        names = [t.name for t in dist.sample(np.random.default_rng(0), 6, split)]
        assert sorted(names) == sorted(classes * 3)  # a multiple of the class count: balanced
    summary = train(config, tmp_path / "run")
    held_out = {"door-open-v3", "drawer-close-v3"}
    metaworld = summary["metaworld"]
    assert metaworld["n_tasks"] == 100 and metaworld["episodes"] == 13 and metaworld["adaptation_episodes"] == 10
    assert set(metaworld["per_class"]) == held_out
    assert all(row["n_tasks"] == 50 for row in metaworld["per_class"].values())
    assert set(summary["per_class"]) <= held_out and len(summary["success_per_episode"]) == 2
    saved = json.loads((tmp_path / "run" / "eval" / "metaworld.json").read_text())
    assert {t["name"] for t in saved["tasks"]} == held_out
    assert len(saved["successes"]) == 100 and len(saved["successes"][0]) == 13
    # each class's rate is its own 50 tasks' success over the 3 evaluation episodes (after 10 of
    # adaptation), recounted here from the per-task, per-episode record
    successes = np.array(saved["successes"])
    for name, row in metaworld["per_class"].items():
        mine = [i for i, t in enumerate(saved["tasks"]) if t["name"] == name]
        assert row["success_rate"] == pytest.approx(successes[mine][:, 10:].mean(axis=1).mean())
        assert row["success_rate_per_episode"] == pytest.approx(successes[mine][:, 10:].mean(axis=0).tolist())
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("meta_test/episode_0/success" in r for r in records)
    paths = plot_runs([tmp_path / "run"], tmp_path / "plots")
    assert tmp_path / "plots" / "success_curves.png" in paths
    from trmrl.plot import load_run, quantity_curves

    labels = sorted(quantity_curves([load_run(tmp_path / "run", "adaptation")], "success"))
    assert [label.split(" · ")[1] for label in labels] == [
        "held-out meta-test, mean actions", "training episodes, sampled actions"]
    versions = json.loads((tmp_path / "run" / "versions.json").read_text())
    assert versions["mujoco"] == "3.3.0" and versions["metaworld"].startswith("3.")
