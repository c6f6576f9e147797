"""Task distributions: seeding, documented ranges, rewards from the simulator state, env checks."""

import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from trmrl.tasks import make_task_distribution, registered
from trmrl.trial import TrialEnv

METAWORLD = {name for name, entry in registered().items() if "reward_function_version" in entry.options}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in METAWORLD else n for n in registered()])
def test_same_seed_same_tasks(name):
    d = make_task_distribution(name)
    a = d.sample(np.random.default_rng(7), 10, "train")
    b = d.sample(np.random.default_rng(7), 10, "train")
    c = d.sample(np.random.default_rng(8), 10, "train")
    assert a == b and a != c


def rng0():
    return np.random.default_rng(0)


def test_documented_ranges():
    rng = rng0()
    goals = np.array([t.params for t in make_task_distribution("point-nav").sample(rng, 500, "train")])
    xy_goals = [t.params for t in make_task_distribution("point-nav-xy").sample(rng0(), 500, "train")]
    assert np.array_equal(goals, np.array(xy_goals))
    assert np.allclose(np.linalg.norm(goals, axis=1), 1.0) and (goals[:, 1] >= 0).all()
    v = [t.params[0] for t in make_task_distribution("cheetah-vel").sample(rng, 500, "train")]
    assert 0 <= min(v) and max(v) <= 3 and max(v) > 2.9
    v = [t.params[0] for t in make_task_distribution("cheetah-vel-ood").sample(rng, 500, "train")]
    assert 3 <= min(v) and max(v) <= 4
    for name in ("cheetah-dir", "ant-dir"):
        values = [t.params[0] for t in make_task_distribution(name).sample(rng, 500, "train")]
        assert set(values) == {-1.0, 1.0} and abs(np.mean(values)) < 0.15


DIMS = {"point-nav": (0, 2), "point-nav-xy": (2, 2), "cheetah-vel": (20, 6), "cheetah-vel-ood": (20, 6), "cheetah-dir": (20, 6),
        "ant-dir": (27, 8)}


@pytest.mark.parametrize("name,obs_dim,act_dim", [(name, *dims) for name, dims in DIMS.items()])
def test_trial_env_passes_gymnasium_checks(name, obs_dim, act_dim):
    d = make_task_distribution(name)
    env = TrialEnv(d.make_env(), episodes_per_trial=2, max_episode_steps=10, task=d.sample(np.random.default_rng(0), 1, "train")[0])
    assert env.observation_space.shape == (obs_dim + act_dim + 2,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env, skip_render_check=True)


def _env(name, task_index=0):
    d = make_task_distribution(name)
    env = d.make_env()
    task = d.sample(np.random.default_rng(1), 4, "train")[task_index]
    env.set_task(task)
    env.reset(seed=0)
    return env, task


def test_cheetah_vel_reward_from_simulator_state():
    env, task = _env("cheetah-vel")
    action = np.linspace(-1.5, 1.5, 6)  # out of range on purpose: the cost uses the raw action
    x0 = env.data.qpos[0]
    obs, reward, terminated, truncated, _ = env.step(action)
    velocity = (env.data.qpos[0] - x0) / 0.05
    assert reward == pytest.approx(-abs(velocity - task.params[0]) - 0.05 * np.sum(action**2))
    assert not terminated and not truncated
    assert np.allclose(obs, np.concatenate([env.data.qpos[1:], env.data.qvel, env.data.body("torso").xpos]))
    twin, _ = _env("cheetah-vel")
    twin.step(np.clip(action, -1, 1))
    assert np.allclose(twin.data.qpos, env.data.qpos)  # MuJoCo clamps the raw action to ctrlrange


def test_cheetah_dir_reward_from_simulator_state():
    env, task = _env("cheetah-dir")
    x0 = env.data.qpos[0]
    action = np.full(6, 0.5)
    _, reward, *_ = env.step(action)
    assert reward == pytest.approx(task.params[0] * (env.data.qpos[0] - x0) / 0.05 - 0.05 * 6 * 0.25)


def test_ant_dir_reward_and_termination():
    env, task = _env("ant-dir")
    xy0 = env.data.body("torso").xpos[:2].copy()
    action = np.full(8, 0.3)
    obs, reward, terminated, _, _ = env.step(action)
    velocity = (env.data.body("torso").xpos[:2] - xy0) / 0.05
    theta = task.params[0]
    expected = velocity @ [np.cos(theta), np.sin(theta)] - 0.5 * 8 * 0.09 + 1.0
    assert reward == pytest.approx(expected) and not terminated
    assert np.allclose(obs, np.concatenate([env.data.qpos[2:], env.data.qvel]))
    qpos = env.data.qpos.copy()
    qpos[2] = 1.5  # torso above 1.0: outside the healthy range
    env.set_state(qpos, env.data.qvel)
    assert env.step(np.zeros(8))[2]


@pytest.mark.parametrize("name", ["point-nav", "point-nav-xy"])
def test_point_nav_reward_is_minus_distance(name):
    env, task = _env(name)
    obs, reward, _, _, info = env.step(np.array([2.0, -0.5]))  # clipped to [1, -0.5], step size 0.1
    assert np.allclose(info["position"], [0.1, -0.05])
    assert obs.shape == ((2,) if name == "point-nav-xy" else (0,))
    assert reward == pytest.approx(-np.linalg.norm(info["position"] - np.array(task.params)))


def test_point_nav_goal_distribution_and_step_are_options():
    from trmrl.algos import make_config
    from trmrl.config import TaskConfig
    from trmrl.errors import ConfigError

    config = make_config(task=TaskConfig(goal_radius=2.0, goal_arc=90.0, step_size=0.25))
    d = make_task_distribution("point-nav", **config.task_options())
    goals = np.array([t.params for t in d.sample(rng0(), 200, "train")])
    assert np.allclose(np.hypot(goals[:, 0], goals[:, 1]), 2.0)
    angles = np.degrees(np.arctan2(goals[:, 1], goals[:, 0]))
    assert angles.min() >= 0 and angles.max() <= 90 and angles.max() > 80  # the whole quarter, no more
    env = d.make_env()
    env.set_task(d.sample(rng0(), 1, "train")[0])
    env.reset(seed=0)
    assert np.allclose(env.step(np.array([5.0, -0.5]))[4]["position"], [0.25, -0.125])  # clipped, then scaled
    for bad, message in ((dict(goal_radius=0.0), "goal_radius"), (dict(goal_arc=400.0), "goal_arc"),
                         (dict(step_size=-1.0), "step_size")):
        with pytest.raises(ConfigError, match=message):
            TaskConfig(**bad)


def test_point_nav_oracle_is_greedy_by_hand():
    from trmrl.tasks import Task

    d = make_task_distribution("point-nav")
    # goal (1, 0), steps of 0.1: distances 0.9, 0.8, ..., 0.0 in 10 steps, then it stays: -4.5
    # goal (0, 0.25): 0.15, 0.05, then on it (a step is the projection of the goal on the reachable box)
    returns = d.oracle_returns([Task("goal", (1.0, 0.0)), Task("goal", (0.0, 0.25))], episodes=2, max_episode_steps=20)
    assert np.allclose(returns, [[-4.5, -4.5], [-0.2, -0.2]])
