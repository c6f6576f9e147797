"""RL^2 inputs of a trial, the rollout's flags, and per-episode bookkeeping."""

import dataclasses

import numpy as np
import pytest
import torch

from trmrl.evaluate import RandomPolicy
from trmrl.protocols import Starts, Step
from trmrl.sampler import TrialSampler, episode_returns, rollout_metrics
from trmrl.tasks import Task, make_task_distribution
from trmrl.tasks.toy import PointNavEnv
from trmrl.trial import TrialEnv, forget_previous_episode

GOAL = Task("goal", (0.0, 1.0))


def test_augmented_observations_across_an_episode_boundary():
    env = TrialEnv(PointNavEnv(observe_position=True), episodes_per_trial=2, max_episode_steps=2)
    obs, _ = env.reset(seed=0, options={"task": GOAL})
    assert obs.tolist() == [0, 0, 0, 0, 0, 0]  # [s, a, r, d]: zeros before the first action
    obs, r1, term, trunc, info = env.step(np.array([0.0, 1.0]))
    assert np.allclose(obs, [0, 0.1, 0, 1, -0.9, 0]) and not info["episode_end"]
    obs, r2, term, trunc, info = env.step(np.array([3.0, 0.0]))  # applied (and remembered) as [1, 0]
    assert info["episode_end"] and not info["episode_terminated"] and not (term or trunc)
    assert np.allclose(info["final_observation"][:2], [0.1, 0.1])
    assert np.allclose(obs, [0, 0, 1, 0, r2, 1])  # back at the start, the last a and r, boundary flag 1
    hidden = forget_previous_episode(torch.as_tensor(obs), torch.tensor(True), act_dim=2)
    assert hidden.tolist() == [0, 0, 0, 0, 0, 1]  # what a policy with episode-scoped memory sees
    env.step(np.zeros(2))
    *_, term, trunc, _ = env.step(np.zeros(2))
    assert trunc and not term  # the trial ends with the time limit of its last episode


class ConstantPolicy:
    """Always moves up: returns on point-nav are computable by hand. Its state counts the steps
    since the last trial start, to check that the sampler carries the state and passes the starts."""

    def initial_state(self, n):
        return torch.zeros(n, dtype=torch.long)

    def act(self, inputs, state, starts, generators, deterministic=False):
        n = len(inputs)
        state = torch.where(starts.trial, 0, state) + 1
        self.seen.append(state.clone())
        return Step(torch.tensor([[0.0, 1.0]]).repeat(n, 1), torch.zeros(n), torch.zeros(n)), state

    def value(self, inputs, state, starts):
        return torch.full((len(inputs),), 0.5)

    def __init__(self):
        self.seen = []


def test_rollout_flags_and_episode_returns_with_a_scripted_policy():
    dist = make_task_distribution("point-nav")
    sampler = TrialSampler(dist, n_envs=2, episodes_per_trial=3, max_episode_steps=4)
    tasks = [GOAL, Task("goal", (1.0, 0.0))]
    policy = ConstantPolicy()
    rollout = sampler.collect(policy, tasks, [0, 1], None)
    assert [int(s[0]) for s in policy.seen] == list(range(1, 13))  # one trial: never reset
    assert rollout.rewards.shape == (12, 2) and rollout.obs.shape == (12, 2, 4)  # [a, r, d]
    assert rollout.episode_start[:, 0].nonzero().flatten().tolist() == [0, 4, 8]
    assert rollout.episode_end[:, 0].nonzero().flatten().tolist() == [3, 7, 11]
    assert rollout.trial_end[:, 0].nonzero().flatten().tolist() == [11]
    assert rollout.bootstrap_values[[3, 7, 11], 0].tolist() == [0.5] * 3  # V(final obs) at time limits
    ys = 0.1 * np.arange(1, 5)
    up = -np.sum(np.abs(1.0 - ys))
    right = -np.sum(np.hypot(1.0, ys))
    returns = episode_returns(rollout, 3)
    assert np.allclose(returns, [[up] * 3, [right] * 3])
    assert np.isnan(episode_returns(rollout, 4)[:, 3]).all()

    assert rollout.success is None and "charts/success" not in rollout_metrics(rollout)  # point-nav has none
    success = torch.zeros(12, 2, dtype=torch.bool)
    success[[1, 2, 9], 0] = True  # env 0: twice in its first episode, once in its third
    hand = rollout_metrics(dataclasses.replace(rollout, success=success))
    assert hand["charts/success"] == pytest.approx(2 / 6)  # episodes, not steps
    assert hand["charts/episode_return"] == pytest.approx((3 * up + 3 * right) / 6)
    # stopped after 10 steps: the third episodes are still running and count nowhere
    cut = dataclasses.replace(rollout, success=success, **{
        f.name: getattr(rollout, f.name)[:10] for f in dataclasses.fields(rollout) if f.name not in ("cut_values", "success")})
    cut = dataclasses.replace(cut, success=success[:10])
    partial = rollout_metrics(cut)
    assert partial["charts/episodes"] == 4 and partial["charts/episode_return"] == pytest.approx((2 * up + 2 * right) / 4)
    assert partial["charts/success"] == pytest.approx(1 / 4) and partial["charts/trial_return"] == 0.0

    # actions outside the box, counted per component: 3 of the 48 (12 steps x 2 envs x 2 dims)
    actions = torch.zeros(12, 2, 2)
    actions[0, 0, 0], actions[5, 1, 1], actions[7, 0, 1] = 1.5, -1.01, 3.0
    actions[2, 1, 0] = 1.0  # on the bound: inside
    clipped = rollout_metrics(dataclasses.replace(rollout, actions=actions), sampler.action_bounds)
    assert clipped["charts/actions_clipped"] == pytest.approx(3 / 48)
    assert "charts/actions_clipped" not in rollout_metrics(rollout)


def test_trials_of_a_random_length():
    """`task.min_episodes_per_trial`: each trial draws 1..3 episodes from its env's seeded stream;
    the rollout stays 3 x 4 steps, a new trial starting where one ends; the same seed, the same
    lengths."""
    dist = make_task_distribution("point-nav")
    lengths = []
    for seed in range(6):
        sampler = TrialSampler(dist, n_envs=1, episodes_per_trial=3, max_episode_steps=4, min_episodes=1)
        rollout = sampler.collect(ConstantPolicy(), [GOAL], [seed], None, steps=60)
        starts = rollout.trial_start[:, 0].nonzero().flatten()
        episodes = [int(rollout.episode_start[a:b, 0].sum()) for a, b in zip(starts, starts[1:])]
        again = TrialSampler(dist, n_envs=1, episodes_per_trial=3, max_episode_steps=4, min_episodes=1).collect(
            ConstantPolicy(), [GOAL], [seed], None, steps=60)
        assert torch.equal(again.trial_start, rollout.trial_start)
        after_end = rollout.trial_end[:, 0].nonzero().flatten() + 1
        assert after_end[after_end < 60].tolist() == starts[1:].tolist()
        lengths += episodes
    assert set(lengths) == {1, 2, 3}  # 1 in 3 of about 60 trials each: all three lengths occur
    fixed = TrialSampler(dist, n_envs=1, episodes_per_trial=3, max_episode_steps=4).collect(
        ConstantPolicy(), [GOAL], [0], None, steps=60)
    assert fixed.trial_start[:, 0].nonzero().flatten().tolist() == list(range(0, 60, 12))


def test_random_policy_stays_in_the_action_box():
    policy = RandomPolicy(np.array([-1.0, -2.0]), np.array([1.0, 0.0]))
    starts = Starts(torch.ones(500, dtype=torch.bool), torch.ones(500, dtype=torch.bool))
    step, _ = policy.act(torch.zeros(500, 3), None, starts, [torch.Generator().manual_seed(i) for i in range(500)])
    a = step.actions
    assert (a[:, 0] >= -1).all() and (a[:, 0] <= 1).all() and (a[:, 1] >= -2).all() and (a[:, 1] <= 0).all()


@pytest.mark.parametrize("name", ["point-nav", "ant-dir"])
def test_data_do_not_depend_on_how_tasks_are_split_over_samplers(name):
    """Per-task random streams: B tasks collected in one sampler equal the same tasks collected
    as two samplers of B/2 (ant-dir: early terminations restart trials at different steps)."""
    from trmrl.algos.trmrl import TrMRLPolicy
    from trmrl.nets.policy import ActorCritic, ModelConfig
    from trmrl.seeding import Stream, task_streams

    dist = make_task_distribution(name)
    tasks = dist.sample(np.random.default_rng(0), 4, "train")
    whole = TrialSampler(dist, 4, 2, 6)
    model = ActorCritic(whole.obs_dim, whole.act_dim, ModelConfig(d_model=16, n_heads=2, d_ff=16, window=3),
                        torch.Generator().manual_seed(0))
    policy = TrMRLPolicy(model, "trial")

    def collect(sampler, indices):
        return sampler.collect(policy, [tasks[i] for i in indices],
                               *task_streams(7, Stream.TRAIN_ENVS, Stream.TRAIN_ACTIONS, 3, indices))

    together = collect(whole, range(4))
    halves = [collect(TrialSampler(dist, 2, 2, 6), part) for part in (range(2), range(2, 4))]
    for field in ("episode_start", "trial_start", "episode_end", "terminated", "trial_end"):
        assert torch.equal(getattr(together, field), torch.cat([getattr(h, field) for h in halves], dim=1)), field
    # The policy's batched matmuls round differently for 4 rows than for 2 (about 1e-7), and the
    # simulator carries that along; anything drawn from a shared stream would differ by O(1).
    for field in ("obs", "actions", "log_probs", "values", "rewards", "bootstrap_values"):
        joined = torch.cat([getattr(h, field) for h in halves], dim=1)
        assert torch.allclose(getattr(together, field), joined, rtol=0, atol=1e-4), field
    assert torch.allclose(together.cut_values, torch.cat([h.cut_values for h in halves]), rtol=0, atol=1e-4)
    if name == "point-nav":
        assert not torch.equal(together.actions[:, 0], together.actions[:, 1])  # streams differ per task


@pytest.mark.parametrize("name, vector_env", [("point-nav", "async"), ("ant-dir", "async"), ("point-nav", "split"),
                                              ("ant-dir", "split")])
def test_subprocess_envs_give_the_data_of_in_process_envs(name, vector_env, monkeypatch):
    """`vector_env='async'` (one subprocess per env) and 'split' (shards over worker processes;
    here three shards of 1, 2 and 2 envs whatever the machine's cores) collect exactly what the
    in-process envs collect, including restarted trials (ant-dir terminates early) and fewer
    tasks than envs (3 of 5: the last shard idle); closing ends the workers."""
    from trmrl import sampler
    from trmrl.algos.trmrl import TrMRLPolicy
    from trmrl.nets.policy import ActorCritic, ModelConfig
    from trmrl.seeding import Stream, task_streams

    monkeypatch.setattr(sampler, "usable_cores", lambda: 3)
    dist = make_task_distribution(name)
    tasks = dist.sample(np.random.default_rng(0), 3, "train")
    local, remote = TrialSampler(dist, 5, 2, 6), TrialSampler(dist, 5, 2, 6, vector_env=vector_env)
    workers = [process for _, process in getattr(remote.envs, "workers", [])]
    assert len(workers) == (2 if vector_env == "split" else 0)
    model = ActorCritic(local.obs_dim, local.act_dim, ModelConfig(d_model=16, n_heads=2, d_ff=16, window=3),
                        torch.Generator().manual_seed(0))
    policy = TrMRLPolicy(model, "trial")
    try:
        rollouts = [s.collect(policy, tasks, *task_streams(7, Stream.TRAIN_ENVS, Stream.TRAIN_ACTIONS, 3, range(3)),
                              steps=30) for s in (local, remote)]
    finally:
        remote.close()
    assert not any(process.is_alive() for process in workers)
    if vector_env == "split":
        assert remote.envs.bounds == [0, 1, 3, 5] and remote.envs._active == [(1, 3)]
    assert rollouts[0].trial_end.any()  # trials ended and restarted within the 30 steps
    for field in ("obs", "actions", "rewards", "bootstrap_values", "episode_start", "trial_start", "episode_end",
                  "terminated", "trial_end", "cut_values"):
        assert torch.equal(getattr(rollouts[0], field), getattr(rollouts[1], field)), field
    assert rollouts[0].success is None and rollouts[1].success is None  # (MetaWorld's: test_metaworld)


def test_trials_of_a_random_length_are_refused_where_they_cannot_apply():
    from trmrl.algos import make_config
    from trmrl.config import TaskConfig
    from trmrl.errors import ConfigError

    with pytest.raises(ConfigError, match="must be in 1..task.episodes_per_trial"):
        TaskConfig(min_episodes_per_trial=3)
    with pytest.raises(ConfigError, match="maml does not train on trials of a random length"):
        make_config("maml", task=TaskConfig(min_episodes_per_trial=1))
    assert make_config("rl2", task=TaskConfig(min_episodes_per_trial=1)).task.min_episodes_per_trial == 1


class _BrokenStep:
    """A trial env whose simulator fails at its first step in a worker process of 'split' (the
    shard of the process itself steps)."""

    def __init__(self) -> None:
        self.env = TrialEnv(make_task_distribution("point-nav").make_env(), 2, 6)
        self.observation_space, self.action_space = self.env.observation_space, self.env.action_space

    def reset(self, **kwargs):
        return self.env.reset(**kwargs)

    def step(self, action):
        import multiprocessing

        if multiprocessing.parent_process() is not None:
            raise FloatingPointError("the simulator diverged")
        return self.env.step(action)

    def close(self) -> None:
        self.env.close()


def test_a_failing_env_in_a_split_worker_is_reported_where_the_step_was_asked_for():
    from trmrl.sampler import SplitEnvs

    envs = SplitEnvs(_BrokenStep, 2, shards=2)
    workers = [process for _, process in envs.workers]
    assert len(workers) == 1
    try:
        tasks = make_task_distribution("point-nav").sample(np.random.default_rng(0), 2, "train")
        assert envs.reset(tasks, [0, 1]).shape == (2, envs.observation_space.shape[0])
        with pytest.raises(RuntimeError, match="an env worker failed: FloatingPointError: the simulator diverged"):
            envs.step(np.zeros((2, envs.action_space.shape[0])))
    finally:
        envs.close()
    assert not any(process.is_alive() for process in workers)
