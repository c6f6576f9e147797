"""PEARL: the product-of-Gaussians posterior against its closed form, how it narrows, the KL
term and the soft targets by hand, buffers that keep tasks apart, transitions with the right
s', a meta-test that reads nothing but the test task (garage's bug), resume, and a short
learning run on point-nav."""

import json
import math

import numpy as np
import pytest
import torch

from trmrl.algos import make_config
from trmrl.algos.pearl import (
    PEARL,
    ContextEncoder,
    PEARLConfig,
    TanhGaussianPolicy,
    TaskBuffers,
    kl_to_prior,
    product_of_gaussians,
    soft_q_target,
    soft_v_target,
    transitions,
)
from trmrl.config import EvalConfig, TaskConfig
from trmrl.evaluate import MetaTester, during_training
from trmrl.presets import get_preset
from trmrl.tasks import make_task_distribution
from trmrl.train import train

TINY = PEARLConfig(n_train_tasks=6, latent_size=3, net_size=32, encoder_hidden=(32,), initial_steps=40,
                   tasks_per_iteration=2, prior_steps=20, extra_posterior_steps=20, gradient_steps=10,
                   meta_batch=4, batch_size=16, context_batch=8)


def tiny_pearl(task="point-nav", seed=3, **changes):
    return make_config("pearl", preset="point-nav", seed=seed, total_env_steps=40 * 6 + 2 * 80,
                       task=TaskConfig(name=task, max_episode_steps=10),
                       pearl=TINY if not changes else TINY.__class__(**{**TINY.__dict__, **changes}),
                       eval=EvalConfig(every_epochs=1, n_tasks=3, episodes=3, final_n_tasks=3, final_episodes=3),
                       checkpoint_every=1, progress=False)


def test_policy_has_three_relu_hidden_layers_and_small_heads_as_oyster():
    """oyster's TanhGaussianPolicy: three hidden layers of net_size, each uniform in
    +-1/sqrt(fan_in) with bias 0.1 and a ReLU after it, then mean and log-std layers in +-1e-3."""
    policy = TanhGaussianPolicy(7, 2, 300, torch.Generator().manual_seed(0))
    hidden = [m for m in policy.trunk if isinstance(m, torch.nn.Module) and hasattr(m, "weight")]
    assert [tuple(m.weight.shape[1:]) for m in hidden] == [(7, 300), (300, 300), (300, 300)]
    assert sum(isinstance(m, torch.nn.ReLU) for m in policy.trunk) == 3 and isinstance(policy.trunk[-1], torch.nn.ReLU)
    for layer, fan_in in zip(hidden, (7, 300, 300)):
        assert layer.weight.abs().max().item() == pytest.approx(fan_in**-0.5, rel=0.02)
        assert torch.all(layer.bias == 0.1)
    assert policy.heads.weight.abs().max().item() == pytest.approx(1e-3, rel=0.02)
    # so the initial policy's mean depends on its input (with a near-zero third layer it barely did)
    x = torch.randn(64, 7, generator=torch.Generator().manual_seed(1))
    mean, _ = policy(x)
    assert mean.std(0).mean().item() > 0.1 * mean.abs().mean().item(), mean.std(0)


def test_product_of_two_gaussians_by_hand():
    # N(1, 1) x N(3, 3): precision 1 + 1/3 = 4/3 -> variance 3/4; mean 3/4 * (1/1 + 3/3) = 1.5
    mean, variance = product_of_gaussians(torch.tensor([[1.0], [3.0]]), torch.tensor([[1.0], [3.0]]))
    assert torch.allclose(mean, torch.tensor([1.5])) and torch.allclose(variance, torch.tensor([0.75]))
    # the same as the normalised product of the densities on a fine grid
    x = torch.linspace(-6, 10, 200_001, dtype=torch.float64)
    density = torch.exp(-0.5 * (x - 1) ** 2) * torch.exp(-0.5 * (x - 3) ** 2 / 3)
    density /= density.sum()
    grid_mean = (x * density).sum()
    assert math.isclose(grid_mean, 1.5, abs_tol=1e-6) and math.isclose(((x - grid_mean) ** 2 * density).sum(), 0.75,
                                                                        abs_tol=1e-6)


def test_posterior_ignores_order_and_narrows_as_context_grows():
    encoder = ContextEncoder(4, (16, 16), 3, torch.Generator().manual_seed(0))
    context = torch.randn(2, 12, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        mean, variance = encoder(context)
        shuffled = encoder(context[:, torch.randperm(12, generator=torch.Generator().manual_seed(2))])
        assert torch.allclose(mean, shuffled[0], atol=1e-6) and torch.allclose(variance, shuffled[1], atol=1e-6)
        variances = torch.stack([encoder(context[:, :n])[1] for n in range(1, 13)])  # (12, 2, Z)
    assert (variances[1:] < variances[:-1]).all()  # every factor adds precision


def test_kl_to_the_unit_prior_by_hand():
    # 0.5 * sum(var + mean^2 - 1 - log var) = 0.5 * ((1 + 1 - 1 - 0) + (0.5 + 0 - 1 - log 0.5))
    kl = kl_to_prior(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.5]))
    assert math.isclose(float(kl), 0.5 * (1.0 + (-0.5 - math.log(0.5))), rel_tol=1e-6)
    assert float(kl_to_prior(torch.zeros(5), torch.ones(5))) == 0.0
    agrees = torch.distributions.kl_divergence(torch.distributions.Normal(torch.tensor([0.3, -1.2]), torch.tensor([0.8, 1.7])),
                                               torch.distributions.Normal(0.0, 1.0)).sum()
    assert math.isclose(float(kl_to_prior(torch.tensor([0.3, -1.2]), torch.tensor([0.64, 2.89]))), float(agrees),
                        rel_tol=1e-5)


def test_soft_targets_by_hand():
    # reward scale 5, discount 0.9: 5 * 1 + 0.9 * 10 = 14; a terminal step keeps its reward only
    q = soft_q_target(torch.tensor([1.0, -2.0]), torch.tensor([0.0, 1.0]), torch.tensor([10.0, 10.0]), 5.0, 0.9)
    assert torch.allclose(q, torch.tensor([14.0, -10.0]))
    # V: min over the twin Q of fresh actions minus log pi
    v = soft_v_target(torch.tensor([[1.0, 4.0], [2.0, 3.0]]), torch.tensor([0.5, -1.0]))
    assert torch.allclose(v, torch.tensor([0.5, 4.0]))


def test_task_buffers_keep_tasks_apart_grow_and_forget_the_oldest():
    buffers = TaskBuffers(3, 2, limit=2000)
    for task in range(3):
        buffers.add(task, torch.stack([torch.full((1500,), float(task)), torch.arange(1500.0)], 1))
    assert buffers.data.shape[1] == 2000 and buffers.size.tolist() == [1500] * 3  # grew past 1024
    sample = buffers.sample(torch.tensor([2, 0, 2]), 500, torch.Generator().manual_seed(0))
    assert (sample[..., 0] == torch.tensor([2.0, 0.0, 2.0])[:, None]).all()
    buffers.add(1, torch.stack([torch.full((700,), 1.0), 1500 + torch.arange(700.0)], 1))
    assert buffers.size.tolist() == [1500, 2000, 1500]
    kept = buffers.sample(torch.tensor([1]), 5000, torch.Generator().manual_seed(1))[0, :, 1]
    assert kept.min() >= 200 and kept.max() == 2199  # the 200 oldest rows were overwritten
    buffers.clear(1)
    with pytest.raises(ValueError, match="empty"):
        buffers.sample(torch.tensor([1]), 1, torch.Generator())
    restored = TaskBuffers(3, 2, limit=2000)
    restored.load_state_dict(buffers.state_dict())
    assert torch.equal(restored.sample(torch.tensor([0, 2]), 9, torch.Generator().manual_seed(4)),
                       buffers.sample(torch.tensor([0, 2]), 9, torch.Generator().manual_seed(4)))


def test_transitions_carry_the_ended_episodes_final_state():
    """point-nav-xy observes its position: s' is the next position inside an episode and the
    episode's last position where it ends, never the next episode's start."""
    config = tiny_pearl("point-nav-xy")
    algo = PEARL(config, make_task_distribution("point-nav-xy"))
    rollout = algo.collect_initial()[0]
    rows = transitions(rollout, algo.layout.state_dim)  # (B, T, D)
    s, a, r, s_next, done = algo.layout.split(rows)
    assert torch.allclose(s_next[:, :-1], s[:, 1:])
    assert torch.allclose(s_next, s + 0.1 * a.clamp(-1, 1), atol=1e-6)  # the final step too
    assert torch.equal(done, torch.zeros_like(done)) and torch.allclose(r, rollout.rewards.T)


def test_meta_test_reads_only_the_test_tasks_own_transitions():
    """garage's PEARL once built the meta-test posterior from the replay buffer: here poisoning
    every buffer leaves the meta-test unchanged, and the posterior after the exploration episode
    is the encoder's posterior of that episode's transitions."""
    config = tiny_pearl()
    distribution = make_task_distribution("point-nav")
    algo = PEARL(config, distribution)
    algo.train_iteration(algo.epoch_tasks(0), 0)
    tester = MetaTester(distribution, during_training(3, 3, True), 10, seed=0)
    before = tester.run(algo.meta_learner())
    for buffers in (algo.replay, algo.encoder_replay):
        buffers.data.normal_(generator=torch.Generator().manual_seed(9)).mul_(100.0)
    after = tester.run(algo.meta_learner())
    assert np.array_equal(before.returns, after.returns)
    assert not np.allclose(before.returns[:, 0], before.returns[:, 2])  # the posterior changed the agent

    learner = algo.meta_learner()
    explored = tester._single.collect(learner.exploration_policy(), tester.tasks()[:1], [0],
                                      [torch.Generator().manual_seed(0)], steps=10)
    adapted = learner.adapt(learner.exploration_policy(), explored)
    with torch.no_grad():
        expected = algo.encoder(algo.layout.context(transitions(explored, 0)[0]))
    assert torch.allclose(adapted.belief[0][0], expected[0]) and adapted.context.shape == (10, algo.layout.row_dim)
    assert (adapted.belief[1] < 1.0).all()  # narrower than the prior


def test_exploration_episodes_act_on_the_prior():
    config = tiny_pearl(eval_exploration_episodes=2)
    algo = PEARL(config, make_task_distribution("point-nav"))
    learner = algo.meta_learner()
    tester = MetaTester(make_task_distribution("point-nav"), during_training(1, 1, True), 10, seed=0)
    episode = tester._single.collect(learner.exploration_policy(), tester.tasks()[:1], [0],
                                     [torch.Generator().manual_seed(0)], steps=10)
    once = learner.adapt(learner.exploration_policy(), episode)
    assert torch.equal(once.belief[1], torch.ones(1, 3)) and once.episodes_seen == 1
    twice = learner.adapt(once, episode)
    assert (twice.belief[1] < 1.0).all() and twice.context.shape[0] == 20


def test_a_non_finite_loss_stops_with_a_divergence_error():
    from trmrl.errors import DivergenceError

    algo = PEARL(tiny_pearl(), make_task_distribution("point-nav"))
    algo.collect_initial()
    algo.replay.data[..., 2] = float("nan")  # every reward of point-nav's rows [a, r, terminated]
    with pytest.raises(DivergenceError, match="non-finite Q and encoder loss"):
        algo.gradient_step(torch.Generator().manual_seed(0))


def test_pearl_config_and_presets():
    from trmrl.errors import ConfigError

    with pytest.raises(ConfigError, match="pearl.reward_scale"):
        PEARLConfig(reward_scale=0.0)
    with pytest.raises(ConfigError, match="encoder has no data"):
        PEARLConfig(initial_steps=0, prior_steps=0, posterior_steps=0)
    cheetah = get_preset("cheetah-vel", "pearl")
    p = cheetah.pearl
    # oyster's configs/cheetah-vel.json on top of configs/default.py
    assert (p.n_train_tasks, p.initial_steps, p.prior_steps, p.extra_posterior_steps, p.context_batch) == (100, 2000, 400, 600, 100)
    assert (p.latent_size, p.net_size, p.meta_batch, p.batch_size, p.gradient_steps, p.reward_scale, p.kl_weight, p.tau) == \
        (5, 300, 16, 256, 2000, 5.0, 0.1, 0.005)
    assert cheetah.steps_per_epoch == 5 * 5 * 200 and cheetah.initial_env_steps == 100 * 2000
    assert cheetah.env_steps_after(1) == 205_000 and cheetah.n_epochs == 160
    assert get_preset("point-nav", "pearl").pearl.reward_scale == 100.0  # configs/point-robot.json
    with pytest.raises(ConfigError, match="at most 2"):
        PEARL(get_preset("cheetah-dir", "pearl").replace(pearl={"n_train_tasks": 3}),
              make_task_distribution("cheetah-dir"))


def test_resumed_pearl_run_equals_an_uninterrupted_one(tmp_path):
    from trmrl import checkpoint
    from trmrl.rundir import RunDir

    config = tiny_pearl()
    assert config.n_epochs == 2
    full = train(config, tmp_path / "full")
    assert train(config, tmp_path / "split", max_epochs=1) == {}
    assert train(config, tmp_path / "split", resume=True) == full
    a, b = (checkpoint.load(RunDir(tmp_path / d).checkpoint) for d in ("full", "split"))
    assert all(torch.equal(a["model"]["qf"][k], b["model"]["qf"][k]) for k in a["model"]["qf"])
    assert torch.equal(a["replay"]["data"], b["replay"]["data"]) and a["env_steps"] == 40 * 6 + 2 * 2 * 40

    # trmrl eval, with 2 episodes on the prior instead of the run's 1
    from trmrl.cli import main

    assert main(["eval", str(tmp_path / "full"), "--n-tasks", "2", "--episodes", "3", "--exploration-episodes", "2"]) == 0
    saved = json.loads((tmp_path / "full" / "eval" / "adaptation-2x3-seed0-explore2.json").read_text())
    assert np.array(saved["returns"]).shape == (2, 3)


def test_pearl_learns_point_nav_above_random(tmp_path):
    """A short run of small networks (the preset's reward scale and 1000 gradient steps per
    iteration): the meta-test return beats a random policy's (about -20.4) by a clear margin.
    That it learns at all, not that it uses its posterior: measured -15.69 on the prior's episode,
    then -16.84 and -16.89 on the posterior's, below the best constant action on these tasks
    (-14.00); the same run on point-nav-xy for 8,000 steps after the initial pool: -13.86, -17.63,
    -16.49 (the best fixed point to go to: -12.71). That PEARL adapts from the test task's own
    transitions is `test_meta_test_reads_only_the_test_tasks_own_transitions`."""
    config = get_preset("point-nav", "pearl").replace(
        seed=1, progress=False, torch_threads=1, total_env_steps=8000 + 4 * 800,
        pearl={"n_train_tasks": 40, "net_size": 64, "encoder_hidden": (64, 64), "meta_batch": 8, "batch_size": 64,
               "prior_steps": 200, "extra_posterior_steps": 200, "tasks_per_iteration": 2},
        eval=EvalConfig(every_epochs=0, final_n_tasks=20, final_episodes=3))
    summary = train(config, tmp_path / "run")
    assert np.mean(summary["return_per_episode"]) > np.mean(summary["random_return_per_episode"]) + 3.0, summary
