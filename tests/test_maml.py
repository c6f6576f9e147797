"""MAML-TRPO: the inner step by hand, the meta-gradient against finite differences, conjugate
gradient, the TRPO step's KL bound and rejection, the linear baseline, acting per task group,
meta-test adaptation episode by episode, and a short learning run on point-nav."""

import json
import math

import numpy as np
import pytest
import torch

from trmrl.algos import make_config
from trmrl.algos.maml import (
    GaussianMLP,
    MAMLConfig,
    MAMLLearner,
    MAMLPolicy,
    TaskBatch,
    adapt,
    group_forward,
    meta_objective,
    meta_params,
)
from trmrl.config import EvalConfig, TaskConfig
from trmrl.linear_baseline import baseline_features, fit_linear_baseline, steps_since_start
from trmrl.presets import get_preset
from trmrl.protocols import Starts
from trmrl.sampler import Rollout
from trmrl.train import train
from trmrl.trpo import conjugate_gradient, trpo_step


def linear_policy(state_dim=3, act_dim=2, seed=0, dtype=torch.float64):
    """A linear-Gaussian policy (no hidden layer) with non-trivial weights."""
    net = GaussianMLP(state_dim, act_dim, MAMLConfig(hidden_sizes=(), init_std=0.7), torch.Generator().manual_seed(seed))
    with torch.no_grad():
        net.mean[0].bias.copy_(torch.linspace(-0.3, 0.4, act_dim))
        net.log_std.copy_(torch.linspace(-0.5, 0.2, act_dim))
    return net.to(dtype)


def random_batch(groups, n, state_dim=3, act_dim=2, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return TaskBatch(torch.randn(groups, n, state_dim, generator=g, dtype=dtype),
                     torch.randn(groups, n, act_dim, generator=g, dtype=dtype),
                     torch.randn(groups, n, generator=g, dtype=dtype),
                     torch.randn(groups, n, generator=g, dtype=dtype) - 2.0)


def test_inner_step_matches_the_policy_gradient_by_hand():
    net = linear_policy()
    batch = random_batch(2, 7)
    adapted = adapt(net, meta_params(net), batch, lr=0.3, create_graph=False)
    w, b, log_std = net.mean[0].weight.detach(), net.mean[0].bias.detach(), net.log_std.detach()
    var = (2 * log_std).exp()
    for g in range(2):
        s, a, adv = batch.states[g], batch.actions[g], batch.advantages[g]
        z = (a - (s @ w.T + b)) / var  # d log pi / d mean, (N, A)
        # L = -mean(log pi * A): dL/db = -mean(z A), dL/dW = -mean(z A s^T), dL/dlog_std = -mean(((a-mu)^2/var - 1) A)
        grad_b = -(z * adv[:, None]).mean(0)
        grad_w = -(z[:, :, None] * s[:, None, :] * adv[:, None, None]).mean(0)
        grad_log_std = -((((a - (s @ w.T + b)) ** 2) / var - 1) * adv[:, None]).mean(0)
        assert torch.allclose(adapted["mean.0.bias"][g], b - 0.3 * grad_b)
        assert torch.allclose(adapted["mean.0.weight"][g], w - 0.3 * grad_w)
        assert torch.allclose(adapted["log_std"][g], log_std - 0.3 * grad_log_std)


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_matches_finite_differences(first_order):
    torch.manual_seed(0)
    net = GaussianMLP(3, 2, MAMLConfig(hidden_sizes=(4,), init_std=0.8), torch.Generator().manual_seed(3)).double()
    pre, post = random_batch(2, 6, seed=1), random_batch(2, 6, seed=2)
    with torch.no_grad():
        old = group_forward(net, adapt(net, meta_params(net), pre, 0.5, create_graph=False), post.states)
    objective = meta_objective(net, [pre, post], old, 0.5, first_order)
    params = list(net.parameters())
    surrogate, _ = objective(True)
    gradient = torch.cat([g.reshape(-1) for g in torch.autograd.grad(surrogate, params)])

    flat = torch.nn.utils.parameters_to_vector(params).detach()
    eps = 1e-6
    numeric = torch.zeros_like(flat)
    for i in range(len(flat)):
        values = []
        for sign in (1, -1):
            shifted = flat.clone()
            shifted[i] += sign * eps
            torch.nn.utils.vector_to_parameters(shifted, params)
            values.append(float(objective(False)[0]))
        numeric[i] = (values[0] - values[1]) / (2 * eps)
    torch.nn.utils.vector_to_parameters(flat, params)
    if first_order:
        # first order: the inner gradient is a constant, so the meta-gradient is the surrogate's
        # gradient at the adapted parameters, which differs from the full derivative
        assert not torch.allclose(gradient, numeric, rtol=1e-3, atol=1e-6)
    else:
        assert torch.allclose(gradient, numeric, rtol=1e-5, atol=1e-7)


def test_conjugate_gradient_solves_a_known_system():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=g, dtype=torch.float64)
    a = m @ m.T + 0.5 * torch.eye(6, dtype=torch.float64)
    x_true = torch.randn(6, generator=g, dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, a @ x_true, iters=6)
    assert torch.allclose(x, x_true, atol=1e-8)


def quadratic_problem(kl_offset=0.0):
    """surrogate g . theta and KL 0.5 (theta - theta0)^T F (theta - theta0) + offset."""
    theta = torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64))
    theta0 = theta.detach().clone()
    g = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    f = torch.tensor([[2.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 3.0]], dtype=torch.float64)

    def objective(differentiable):
        with torch.set_grad_enabled(differentiable):
            d = theta - theta0
            return g @ theta, 0.5 * d @ f @ d + kl_offset

    return theta, theta0, g, f, objective


def test_trpo_step_meets_the_kl_bound_and_rejects_when_it_cannot():
    theta, theta0, g, f, objective = quadratic_problem()
    step = trpo_step([theta], objective, max_kl=0.01, cg_iters=10, cg_damping=0.0)
    natural = torch.linalg.solve(f, g)
    expected = theta0 + math.sqrt(2 * 0.01 / (g @ natural)) * natural
    assert step.accepted and step.backtracks == 0
    assert torch.allclose(theta.detach(), expected, atol=1e-8)
    assert step.kl <= 0.01 + 1e-12 and step.kl == pytest.approx(0.01, rel=1e-6)
    assert step.surrogate_after > step.surrogate_before

    theta, theta0, _, _, objective = quadratic_problem(kl_offset=1.0)  # no point meets KL <= 0.01
    step = trpo_step([theta], objective, max_kl=0.01, line_search_steps=5)
    assert not step.accepted and torch.equal(theta.detach(), theta0)


def test_linear_baseline_fits_a_linear_return_exactly():
    g = torch.Generator().manual_seed(0)
    states = torch.randn(2, 40, 3, generator=g)
    t = torch.arange(40).repeat(2, 1)
    features = baseline_features(states, t)
    assert features.shape == (2, 40, 10)
    true = torch.randn(2, 10, generator=g, dtype=torch.float64)
    targets = (features.double() @ true[..., None])[..., 0]
    coefficients = fit_linear_baseline(features, targets, reg=1e-10)
    assert torch.allclose((features.double() @ coefficients[..., None])[..., 0], targets, atol=1e-6)
    starts = torch.tensor([[1, 1], [0, 0], [1, 0], [0, 0]], dtype=torch.bool)
    assert steps_since_start(starts).tolist() == [[0, 0], [1, 1], [0, 2], [1, 3]]


def test_policy_acts_per_task_group_as_each_group_alone():
    net = linear_policy(dtype=torch.float32)
    batch = random_batch(3, 5, dtype=torch.float32)
    params = adapt(net, meta_params(net), batch, lr=0.5, create_graph=False)
    inputs = torch.randn(6, 3 + 2 + 2)  # B = 3 groups x 2 envs, [s, a, r, d]
    starts = Starts(torch.ones(6, dtype=torch.bool), torch.ones(6, dtype=torch.bool))
    together, _ = MAMLPolicy(net, params, explores=False).act(inputs, None, starts, None, deterministic=True)
    for g in range(3):
        own = {k: v[g : g + 1] for k, v in params.items()}
        alone, _ = MAMLPolicy(net, own, explores=False).act(inputs[2 * g : 2 * g + 2], None, starts, None, True)
        assert torch.allclose(together.actions[2 * g : 2 * g + 2], alone.actions)
        assert torch.allclose(together.log_probs[2 * g : 2 * g + 2], alone.log_probs)
    exploring, _ = MAMLPolicy(net, params).act(inputs, None, starts, [torch.Generator().manual_seed(i) for i in range(6)],
                                               deterministic=True)
    assert not torch.allclose(exploring.actions, together.actions)  # exploration samples anyway


def one_episode(steps=4, reward=-1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    flags = torch.zeros(steps, 1, dtype=torch.bool)
    start, end = flags.clone(), flags.clone()
    start[0], end[-1] = True, True
    return Rollout(obs=torch.randn(steps, 1, 3 + 2 + 2, generator=g), actions=torch.randn(steps, 1, 2, generator=g),
                   log_probs=torch.zeros(steps, 1), values=torch.zeros(steps, 1),
                   rewards=reward + torch.randn(steps, 1, generator=g), episode_start=start, trial_start=start,
                   episode_end=end, terminated=flags, trial_end=end, bootstrap_values=torch.zeros(steps, 1),
                   cut_values=torch.zeros(1))


def test_meta_test_adapts_after_its_exploration_episodes():
    net = linear_policy(dtype=torch.float32)
    learner = MAMLLearner(net, MAMLConfig(inner_lr=0.5, inner_steps=1, eval_exploration_episodes=2))
    policy = learner.exploration_policy()
    first = learner.adapt(policy, one_episode(seed=0))
    assert first.explores and first.steps_taken == 0 and len(first.gathered) == 1
    assert all(torch.equal(first.params[k], policy.params[k]) for k in policy.params)
    second = learner.adapt(first, one_episode(seed=1))
    assert not second.explores and second.steps_taken == 1 and second.gathered == ()
    assert not torch.equal(second.params["log_std"], policy.params["log_std"])
    assert learner.adapt(second, one_episode(seed=2)) is second  # one step at meta-test, as in training
    never = MAMLLearner(net, MAMLConfig(eval_inner_steps=0)).exploration_policy()
    assert not never.explores  # no adaptation: act as the protocol says from the first episode


def test_maml_learns_to_adapt_on_point_nav(tmp_path):
    """A short run: the adapted policy's return beats the meta-parameters' and a random policy's
    (about -20.4 on point-nav), and the run writes, resumes and evaluates like any other."""
    config = get_preset("point-nav", "maml").replace(
        total_env_steps=40_000, seed=1, progress=False, torch_threads=1,
        task={"tasks_per_epoch": 10}, maml={"rollouts_per_task": 10},
        eval=EvalConfig(every_epochs=5, n_tasks=10, episodes=2, final_n_tasks=10, final_episodes=2))
    assert config.steps_per_epoch == 10 * 10 * 20 * 2
    summary = train(config, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    late = [r for r in records if "charts/episode_return" in r][-3:]
    pre = np.mean([r["charts/pre_adaptation_episode_return"] for r in late])
    post = np.mean([r["charts/episode_return"] for r in late])
    assert post > pre + 2.0 and post < -5.0 and post > -16.0, (pre, post)
    assert all(r["charts/step_accepted"] in (0.0, 1.0) and r["losses/kl"] <= 0.01 for r in late)
    assert len(summary["return_per_episode"]) == 2

    # trmrl eval: adapt after 3 exploration episodes instead of 1 (MAML runs only)
    from trmrl.cli import main

    assert main(["eval", str(tmp_path / "run"), "--n-tasks", "4", "--episodes", "4", "--exploration-episodes", "3"]) == 0
    saved = json.loads((tmp_path / "run" / "eval" / "adaptation-4x4-seed0-explore3.json").read_text())
    assert np.array(saved["returns"]).shape == (4, 4)
    # garage's MetaEvaluator beside the one-episode budget: reported over the episodes after its 10
    garage = summary["meta-evaluator"]
    assert (garage["n_tasks"], garage["episodes"], garage["adaptation_episodes"]) == (10, 13, 10)  # the run's final tasks
    assert garage["evaluation"]["return_mean"] == pytest.approx(np.mean(garage["return_per_episode"][10:]))
    assert main(["eval", str(tmp_path / "run"), "--protocol", "meta-evaluator", "--exploration-episodes", "3"]) == 2


def test_the_meta_evaluator_protocol_explores_in_its_adaptation_episodes_then_adapts_once():
    """garage's MetaEvaluator: MAML gathers all 10 adaptation episodes with the meta-parameters,
    takes its step, then acts adapted; the same as a 13-episode trial of a learner set to explore
    for 10, unlike the run's own 1-episode budget. An in-memory learner runs it as any trial."""
    from trmrl.algos.maml import MAML
    from trmrl.evaluate import MetaTester, resolve_protocol
    from trmrl.tasks import make_task_distribution

    config = get_preset("point-nav", "maml").replace(seed=1, maml={"hidden_sizes": (8, 8), "inner_lr": 1.0})
    distribution = make_task_distribution("point-nav")
    learner = MAML(config, distribution).meta_learner()
    garage = MetaTester(distribution, resolve_protocol("meta-evaluator", "point-nav", n_tasks=3), 20, seed=0)
    trial = MetaTester(distribution, resolve_protocol("adaptation", "point-nav", n_tasks=3, episodes=13), 20, seed=0)
    explored = garage.run(learner).returns
    assert explored.shape == (3, 13)
    np.testing.assert_array_equal(explored, trial.run(learner.with_exploration_episodes(10)).returns)
    once = trial.run(learner).returns  # the run's budget: adapted after episode 0
    assert not np.array_equal(explored[:, 1:10], once[:, 1:10])
    np.testing.assert_array_equal(explored[:, 10:], explored[:, [10]].repeat(3, axis=1))  # one adapted mean policy, point-nav's fixed start


def test_maml_config_is_validated():
    from trmrl.errors import ConfigError

    with pytest.raises(ConfigError, match="maml.inner_lr"):
        MAMLConfig(inner_lr=0.0)
    with pytest.raises(ConfigError, match="maml.line_search_ratio"):
        MAMLConfig(line_search_ratio=1.0)
    config = make_config("maml", task=TaskConfig(max_episode_steps=20, tasks_per_epoch=4),
                         maml=MAMLConfig(rollouts_per_task=3, inner_steps=2))
    assert config.steps_per_epoch == 4 * 3 * 3 * 20


def test_resumed_maml_run_equals_an_uninterrupted_one(tmp_path):
    from conftest import tiny_config

    from trmrl import checkpoint
    from trmrl.log import read_metrics
    from trmrl.rundir import RunDir

    config = tiny_config(algo="maml", maml=MAMLConfig(hidden_sizes=(8,), rollouts_per_task=2), total_env_steps=3 * 160)
    full = train(config, tmp_path / "full")
    assert train(config, tmp_path / "split", max_epochs=2) == {}
    assert train(config, tmp_path / "split", resume=True) == full
    timing = ("time/", "sps")
    records = [[{k: v for k, v in r.items() if not any(t in k for t in timing)} for r in read_metrics(tmp_path / d)]
               for d in ("full", "split")]
    assert records[0] == records[1] and len([r for r in records[0] if "losses/kl" in r]) == 3
    a, b = (checkpoint.load(RunDir(tmp_path / d).checkpoint)["model"] for d in ("full", "split"))
    assert all(torch.equal(a[k], b[k]) for k in a)
