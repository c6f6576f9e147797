"""GAE, returns, losses and the LR schedule against hand-computed values."""

import math

import pytest
import torch

from trmrl.ppo import bootstrap_targets, clipped_surrogate, discounted_returns, gae, lr_factor, lr_schedules, value_loss
from trmrl.sampler import Rollout


def column(*xs):
    return torch.tensor(xs, dtype=torch.float32)[:, None]


def test_gae_by_hand_with_cut():
    # T = 3, one cut after t = 1 (bootstrapping from 5.0 there), gamma 0.5, lambda 0.5
    r, v, nv = column(1, 2, 3), column(1, 1, 2), column(1, 5, 4)
    cut = torch.tensor([[False], [True], [True]])
    adv = gae(r, v, nv, cut, gamma=0.5, lam=0.5)
    d2 = 3 + 0.5 * 4 - 2  # 3
    d1 = 2 + 0.5 * 5 - 1  # 3.5, recursion cut after t=1
    d0 = 1 + 0.5 * 1 - 1  # 0.5
    expected = column(d0 + 0.25 * d1, d1, d2)
    assert torch.allclose(adv, expected)


def test_returns_are_monte_carlo_within_a_segment():
    r, v = column(1, 2, 3), column(9, 9, 9)
    nv = column(9, 9, 0)  # v_{t+1} inside, 0 after the end
    cut = torch.tensor([[False], [False], [True]])
    ret = discounted_returns(r, v, nv, cut, gamma=0.9)
    assert torch.allclose(ret, column(1 + 0.9 * 2 + 0.81 * 3, 2 + 0.9 * 3, 3))


def _trial_rollout(terminated_at: int | None = None) -> Rollout:
    """B = 1, a trial of 2 episodes of 2 steps: steps 0,1 | 2,3; bootstrap values 10 (t=1), 20 (t=3)."""
    T = 4
    z = torch.zeros(T, 1)
    flags = lambda *ts: torch.tensor([[t in ts] for t in range(T)])  # noqa: E731
    terminated = flags(terminated_at) if terminated_at is not None else flags()
    return Rollout(
        obs=torch.zeros(T, 1, 3), actions=torch.zeros(T, 1, 1), log_probs=z, values=column(1, 2, 3, 4), rewards=z,
        episode_start=flags(0, 2), trial_start=flags(0), episode_end=flags(1, 3), terminated=terminated,
        trial_end=flags(3), bootstrap_values=column(0, 10, 0, 20) * (~terminated), cut_values=torch.zeros(1),
    )


def _cut_rollout() -> Rollout:
    """B = 1, T = 4 (ant-dir style): the first trial terminates early after step 1, a new trial
    starts at step 2 and the rollout stops after step 3 in the middle of it; V(next input) = 7."""
    T = 4
    z = torch.zeros(T, 1)
    flags = lambda *ts: torch.tensor([[t in ts] for t in range(T)])  # noqa: E731
    return Rollout(
        obs=torch.zeros(T, 1, 3), actions=torch.zeros(T, 1, 1), log_probs=z, values=column(1, 2, 3, 4),
        rewards=column(1, 1, 1, 1), episode_start=flags(0, 2), trial_start=flags(0, 2), episode_end=flags(1),
        terminated=flags(1), trial_end=flags(1), bootstrap_values=z, cut_values=torch.tensor([7.0]),
    )


@pytest.mark.parametrize("across,bootstrap", [(True, False), (False, True), (False, False)])
def test_a_trial_cut_by_the_rollout_bootstraps_from_the_next_value(across, bootstrap):
    nv, cut = bootstrap_targets(_cut_rollout(), across_episodes=across, bootstrap_truncation=bootstrap)
    assert nv[:, 0].tolist() == [2, 0, 4, 7]  # 0 at the true termination, V(next input) at the cut
    assert cut[:, 0].tolist() == [False, True, False, True]
    returns = discounted_returns(_cut_rollout().rewards, _cut_rollout().values, nv, cut, gamma=0.5)
    assert returns[:, 0].tolist() == [1.5, 1, 1 + 0.5 * (1 + 0.5 * 7), 1 + 0.5 * 7]


def test_bootstrap_targets_across_episodes_paper_style():
    nv, cut = bootstrap_targets(_trial_rollout(), across_episodes=True, bootstrap_truncation=False)
    assert nv[:, 0].tolist() == [2, 3, 4, 0]  # crosses the inner boundary; MC at the trial end
    assert cut[:, 0].tolist() == [False, False, False, True]


def test_bootstrap_targets_truncation_and_termination():
    nv, cut = bootstrap_targets(_trial_rollout(), across_episodes=False, bootstrap_truncation=True)
    assert nv[:, 0].tolist() == [2, 10, 4, 20]
    assert cut[:, 0].tolist() == [False, True, False, True]
    nv, _ = bootstrap_targets(_trial_rollout(terminated_at=1), across_episodes=False, bootstrap_truncation=True)
    assert nv[:, 0].tolist() == [2, 0, 4, 20]  # a true termination bootstraps from 0


def test_clipped_surrogate_by_hand():
    old = torch.zeros(2)
    new = torch.log(torch.tensor([1.5, 0.5]))
    adv = torch.tensor([1.0, -1.0])
    # ratio 1.5 clipped to 1.2 for A=+1 -> 1.2; ratio 0.5 vs clipped 0.8 for A=-1 -> min(-0.5, -0.8) = -0.8
    assert clipped_surrogate(new, old, adv, 0.2).item() == pytest.approx(-(1.2 - 0.8) / 2)


def test_value_losses_by_hand():
    pred, ret = torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0])
    assert value_loss(pred, ret, torch.tensor(0.0), "mse").item() == pytest.approx((1 + 4) / 4)
    log_std = torch.tensor(math.log(2.0))
    nll = ((0.5 * (1 / 2) ** 2 + math.log(2) + 0.5 * math.log(2 * math.pi)) +
           (0.5 * (2 / 2) ** 2 + math.log(2) + 0.5 * math.log(2 * math.pi))) / 2
    assert value_loss(pred, ret, log_std, "nll").item() == pytest.approx(nll, rel=1e-6)


def test_lr_decay_counts_gradient_steps_like_the_original():
    # cheetah-vel: decay from epoch 100 to 750 down to 0.1, milestones every 312 gradient steps
    assert lr_factor(100 * 312 - 1, 312, 100, 750, 0.1) == 1.0
    assert lr_factor(100 * 312, 312, 100, 750, 0.1) == pytest.approx(0.1 ** (1 / 650))
    # an epoch really takes 320 steps, so epoch 100 starts at step 32,000, past 3 milestones
    assert lr_factor(100 * 320, 312, 100, 750, 0.1) == pytest.approx(0.1 ** (3 / 650))
    assert lr_factor(749 * 312 - 1, 312, 100, 750, 0.1) == pytest.approx(0.1 ** (649 / 650))
    assert lr_factor(749 * 312, 312, 100, 750, 0.1) == pytest.approx(0.1)
    assert lr_factor(10**7, 312, 100, 750, 0.1) == pytest.approx(0.1)


def test_the_cheetah_vel_update_runs_320_steps_on_a_312_step_clock():
    from trmrl.algos.trmrl import TrMRL
    from trmrl.presets import get_preset
    from trmrl.tasks import make_task_distribution

    config = get_preset("cheetah-vel")
    policy, value = lr_schedules(config.ppo, samples_per_epoch=20 * 400)
    assert policy.steps_per_epoch == value.steps_per_epoch == 312  # floor(10 * 8000 / 256)
    assert policy(32000) == pytest.approx(3e-5 * 0.1 ** (3 / 650)) and value(32000) == 2.5e-4  # value LR: constant
    assert TrMRL(config, make_task_distribution("cheetah-vel")).steps_per_epoch == 320  # 10 * ceil(8000 / 256)


# the presets' layout (a separate value MLP) in the default run, with gradients clipped (a norm
# far below theirs, so every step clips); the shared network, which compiles the transformer
# twice (about 50 s more), unclipped, with the slow tests
@pytest.mark.parametrize("share, max_grad_norm", [(False, 0.01), pytest.param(True, None, marks=pytest.mark.slow)])
def test_a_compiled_update_equals_the_eager_one(share, max_grad_norm):
    """`ppo.compile`: the same minibatches through one compiled graph per phase (gradients,
    clipping and AdamW) give the eager update's metrics, weights and optimiser state at float
    rounding, and the compiled steps are what ran: each phase's graph compiled once, in a cache
    of its own (dynamo caches per code object; one shared by the phases, and by the steps other
    tests compiled in this process, would hold two entries here and, past its limit, run the
    step uncompiled)."""
    import dataclasses

    import numpy as np
    from conftest import tiny_config

    from trmrl.algos.trmrl import TrMRL
    from trmrl.tasks import make_task_distribution

    base = tiny_config()
    # 80 samples in minibatches of 16: one shape per phase, so each compiles once
    ppo_config = dataclasses.replace(base.ppo, minibatch_size=16, norm_adv=True, ent_coef=0.01, value_loss="nll",
                                     max_grad_norm=max_grad_norm)
    config = dataclasses.replace(base, ppo=ppo_config, model=dataclasses.replace(base.model, share_network=share))
    distribution = make_task_distribution("point-nav")
    eager = TrMRL(config, distribution)
    compiled = TrMRL(dataclasses.replace(config, ppo=dataclasses.replace(ppo_config, compile=True)), distribution)
    assert eager.compiled is None and compiled.compiled is not None
    calls = {"policy": 0, "value": 0}
    for name, step in zip(calls, compiled.compiled, strict=True):
        def counted(*args, _f=step.graph, _name=name):
            calls[_name] += 1
            return _f(*args)
        step.graph = counted

    tasks = distribution.sample(np.random.default_rng(0), 8, "train")
    rollout = eager.sampler.collect(eager.policy, tasks, list(range(8)),
                                    [torch.Generator().manual_seed(i) for i in range(8)])
    for epoch in range(2):
        metrics_e, _ = eager.update(rollout, epoch, torch.Generator().manual_seed(epoch))
        with torch._dynamo.config.patch(recompile_limit=1, fail_on_recompile_limit_hit=True):
            metrics_c, _ = compiled.update(rollout, epoch, torch.Generator().manual_seed(epoch))
        assert metrics_c == pytest.approx(metrics_e, rel=1e-4, abs=1e-6)
    assert calls == {"policy": 2 * 2 * 5, "value": 2 * 2 * 5}  # 2 epochs x 2 passes x 5 minibatches
    initial = dict(TrMRL(config, distribution).model.named_parameters())
    moved = 0.0
    for (name, p_e), p_c in zip(eager.model.named_parameters(), compiled.model.parameters(), strict=True):
        if name.endswith("in_proj.bias"):
            # the key bias's true gradient is 0 (it shifts every score of a query alike, and the
            # softmax ignores that): both steps hand AdamW rounding noise there, which it scales
            # up to full steps; compare the query and value biases only
            d = len(p_e) // 3
            p_e, p_c = torch.cat([p_e[:d], p_e[2 * d:]]), torch.cat([p_c[:d], p_c[2 * d:]])
        torch.testing.assert_close(p_c, p_e, rtol=1e-4, atol=1e-6, msg=name)
        moved = max(moved, float((dict(eager.model.named_parameters())[name] - initial[name]).detach().abs().max()))
    assert moved > 1e-3  # the updates did move the weights
    for phase in ("policy", "value"):  # the state a checkpoint keeps, as the eager AdamW left it
        state_e = getattr(eager.optimizers, phase).state_dict()["state"]
        state_c = getattr(compiled.optimizers, phase).state_dict()["state"]
        assert state_c.keys() == state_e.keys()
        for i in state_e:
            assert state_c[i]["step"].dtype == state_e[i]["step"].dtype and float(state_c[i]["step"]) == 20
            torch.testing.assert_close(state_c[i]["exp_avg_sq"], state_e[i]["exp_avg_sq"], rtol=1e-3, atol=1e-10)
