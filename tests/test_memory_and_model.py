"""Window semantics, causality, memory scopes, T-Fixup scales, and the batched update path
against step-by-step acting."""

import math

import numpy as np
import pytest
import torch

from trmrl.algos.trmrl import TrMRLPolicy, make_batch
from trmrl.config import PPOConfig
from trmrl.memory import Window, gather_windows
from trmrl.nets.policy import ActorCritic, ModelConfig
from trmrl.nets.transformer import CausalTransformer, sinusoidal_positions
from trmrl.protocols import Starts
from trmrl.sampler import TrialSampler
from trmrl.tasks import make_task_distribution

SMALL = ModelConfig(d_model=16, n_heads=4, d_ff=32, n_layers=2, window=3)


def model(config=SMALL, obs_dim=4, act_dim=2, seed=0):
    return ActorCritic(obs_dim, act_dim, config, torch.Generator().manual_seed(seed))


def test_window_fills_left_aligned_then_slides():
    w = Window.empty(batch=1, window=3, dim=1, pad_value=-1.0)
    seen = []
    for x in (1.0, 2.0, 3.0, 4.0):
        w = w.push(torch.tensor([[x]]))
        seen.append((w.buffer[0, :, 0].tolist(), int(w.length[0])))
    assert seen == [([1, -1, -1], 1), ([1, 2, -1], 2), ([1, 2, 3], 3), ([2, 3, 4], 3)]
    before = w.buffer.clone()
    cleared = w.push(torch.tensor([[5.0]]), clear=torch.tensor([True]))
    assert cleared.buffer[0, :, 0].tolist() == [5, -1, -1] and int(cleared.length[0]) == 1
    assert torch.equal(w.buffer, before)  # immutable: the old window is still there


def test_gather_windows_equals_step_by_step_window():
    gen = torch.Generator().manual_seed(0)
    T, B, O, W = 17, 4, 3, 5
    inputs = torch.randn(T, B, O, generator=gen)
    clears = torch.rand(T, B, generator=gen) < 0.2
    clears[0] = True
    windows, lengths = gather_windows(inputs, clears, W, pad_value=7.0)
    live = Window.empty(B, W, O, pad_value=7.0)
    for t in range(T):
        live = live.push(inputs[t], clear=clears[t])
        assert torch.equal(live.buffer, windows[t]) and torch.equal(live.length, lengths[t])


def test_causality_later_positions_do_not_change_earlier_outputs():
    net = CausalTransformer(16, 4, 32, 2, max_len=6)
    x = torch.randn(2, 6, 16)
    y = x.clone()
    y[:, 4:] += 100.0
    assert torch.allclose(net(x)[:, :4], net(y)[:, :4], atol=1e-5)
    assert not torch.allclose(net(x)[:, 4:], net(y)[:, 4:])


def test_padding_never_reaches_the_latest_memory():
    m = model()
    windows = torch.randn(5, 3, 4)
    lengths = torch.tensor([1, 2, 3, 1, 2])
    garbage = windows.clone()
    for i, n in enumerate(lengths):
        garbage[i, n:] = 1e3
    assert torch.allclose(m.latest_memory(windows, lengths), m.latest_memory(garbage, lengths), atol=1e-5)


@pytest.mark.parametrize("scope", ["episode", "trial"])
def test_memory_scope_and_window_limit(scope):
    """Inputs: one trial, episode 1 = steps 0..5, episode 2 = steps 6..9 (W = 3).
    A change at step 2 must not affect step 6 (beyond W) ... and a change at step 5 (the last
    of episode 1) affects step 6 only when the window spans episodes (trial scope)."""
    m = model()
    T = 10
    inputs = torch.randn(T, 1, 4, generator=torch.Generator().manual_seed(1))
    episode_start = torch.zeros(T, 1, dtype=torch.bool)
    episode_start[[0, 6]] = True
    trial_start = torch.zeros(T, 1, dtype=torch.bool)
    trial_start[0] = True
    clears = episode_start if scope == "episode" else trial_start

    def action_mean(x):
        w, n = gather_windows(x, clears, window=3)
        return m(w[:, 0], n[:, 0]).mean

    base = action_mean(inputs)
    beyond_w = inputs.clone()
    beyond_w[2] += 5.0
    assert torch.allclose(action_mean(beyond_w)[5:], base[5:])  # step 2 left every window by step 5
    previous_episode = inputs.clone()
    previous_episode[5] += 5.0
    changed = not torch.allclose(action_mean(previous_episode)[6], base[6])
    assert changed == (scope == "trial")


def test_sinusoidal_positions_by_hand():
    pe = sinusoidal_positions(3, 4)
    assert pe[0].tolist() == [0.0, 1.0, 0.0, 1.0]
    assert pe[2, 0].item() == pytest.approx(math.sin(2.0))
    assert pe[2, 3].item() == pytest.approx(math.cos(2.0 / 100.0))


def paper_model(tfixup: str) -> ActorCritic:
    config = ModelConfig(d_model=128, n_heads=16, d_ff=512, n_layers=4, window=5, tfixup=tfixup,
                         init_std=0.2, share_network=False)
    return model(config, obs_dim=28, act_dim=6)


def test_tfixup_scales_match_the_worked_values():
    # worked by hand (docs/paper.md section 1): T-Fixup scales xavier-uniform bounds by
    # 0.67 L^-1/4 = 0.67 / 4^(1/4) = 0.47376 for L = 4 layers; Q, K, V and the out-projection are
    # 128 x 128 (xavier bound sqrt(6 / 256) = 0.15309 -> 0.07253), the FFN's 128 x 512
    # (sqrt(6 / 640) = 0.09682 -> 0.04587); the embedding is N(0, d^-1/2) scaled by (9 L)^-1/4:
    # 0.08839 * 0.40825 = 0.03608
    m = paper_model("code")
    assert m.embedding.weight.std().item() == pytest.approx(0.03608, rel=0.05)
    layer = m.transformer.layers[0]
    for block in layer.self_attn.in_proj.weight.split(128):
        assert block.abs().max().item() == pytest.approx(0.07253, rel=0.02)
    assert layer.self_attn.out_proj.weight.abs().max().item() == pytest.approx(0.07253, rel=0.02)
    for w in (layer.linear1.weight, layer.linear2.weight):
        assert w.abs().max().item() == pytest.approx(0.04587, rel=0.02)
    # and off, plain xavier: the scale is what T-Fixup adds
    plain = paper_model("off").transformer.layers[0]
    assert plain.linear1.weight.abs().max().item() == pytest.approx(0.09682, rel=0.02)


def test_tfixup_paper_variant_leaves_q_and_k_unscaled():
    layer = paper_model("paper").transformer.layers[0]
    q, k, v = layer.self_attn.in_proj.weight.split(128)
    xavier = math.sqrt(6 / 256)
    assert q.abs().max().item() == pytest.approx(xavier, rel=0.02)
    assert k.abs().max().item() == pytest.approx(xavier, rel=0.02)
    assert v.abs().max().item() == pytest.approx(xavier * 0.67 * 4**-0.25, rel=0.02)


def test_parameter_count_matches_the_original_cheetah_vel_policy():
    # embedding 3,584 + 4 layers x 197,760 + head 12,806 + log-std 6 (docs/paper.md section 1)
    m = paper_model("code")
    assert sum(p.numel() for p in m.policy_parameters()) == 3584 + 4 * 197760 + 12806 + 6


@pytest.mark.parametrize("scope,share", [("episode", False), ("trial", True)])
def test_batched_update_path_equals_step_by_step_acting(scope, share):
    config = ModelConfig(d_model=16, n_heads=4, d_ff=32, n_layers=2, window=3, memory_scope=scope,
                         share_network=share)
    sampler = TrialSampler(make_task_distribution("point-nav"), 4, 3, 4)
    m = model(config, obs_dim=sampler.obs_dim, act_dim=sampler.act_dim)
    tasks = make_task_distribution("point-nav").sample(np.random.default_rng(0), 4, "train")
    policy = TrMRLPolicy(m, scope)
    rollout = sampler.collect(policy, tasks, [1, 2, 3, 4], [torch.Generator().manual_seed(i) for i in range(4)])
    batch = make_batch(rollout, PPOConfig(), policy)
    with torch.no_grad():
        out = m(batch.windows, batch.lengths)
        assert torch.allclose(out.log_prob(batch.actions), rollout.log_probs.reshape(-1), atol=1e-5)
        assert torch.allclose(out.value, rollout.values.reshape(-1), atol=1e-5)


def test_newest_only_last_layer_equals_the_full_forward():
    net = CausalTransformer(16, 4, 32, 3, max_len=5)
    x = torch.randn(6, 5, 16)
    lengths = torch.tensor([1, 2, 3, 4, 5, 5])
    full = net(x)[torch.arange(6), lengths - 1]
    assert torch.allclose(net.latest(x, lengths), full, atol=1e-5)


@pytest.mark.parametrize("scope", ["episode", "trial"])
def test_episode_scope_hides_the_previous_episode_from_the_policy(scope):
    """The trial env reports a_{t-1}, r_{t-1} across an inner episode boundary; under the
    episode scope the policy acts exactly as if they were zeros (the original code's input)."""
    m = model(ModelConfig(d_model=16, n_heads=4, d_ff=32, n_layers=2, window=3, memory_scope=scope))
    policy = TrMRLPolicy(m, scope)
    carried = torch.tensor([[0.5, -0.2, -0.7, 1.0]])  # point-nav's input [a_{t-1} (2), r_{t-1}, d_{t-1}]
    zeroed = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    starts = Starts(episode=torch.tensor([True]), trial=torch.tensor([False]))
    state = policy.initial_state(1).push(torch.randn(1, 4))
    a = policy.value(carried, state, starts)
    b = policy.value(zeroed, state, starts)
    assert torch.equal(a, b) == (scope == "episode")


def test_shared_log_std_is_one_parameter_broadcast_to_every_action_dimension():
    """`model.shared_log_std` (the original code before 2021-05-11): one log-std for all A
    dimensions; log-prob and entropy as for A equal stds, and its gradient the sum of the
    per-dimension ones of the default model from the same initialisation."""
    import dataclasses

    shared = model(dataclasses.replace(SMALL, shared_log_std=True, init_std=0.3), act_dim=3)
    per_dim = model(dataclasses.replace(SMALL, init_std=0.3), act_dim=3)
    assert shared.log_std.shape == (1,) and per_dim.log_std.shape == (3,)
    windows, lengths = torch.randn(5, SMALL.window, 4, generator=torch.Generator().manual_seed(2)), torch.full((5,), 2)
    out_shared, out_per_dim = shared(windows, lengths), per_dim(windows, lengths)
    assert out_shared.log_std.shape == (3,) and torch.equal(out_shared.log_std, out_per_dim.log_std)
    # entropy of 3 equal Gaussians by hand: 3 (log 0.3 + 0.5 log(2 pi e))
    assert float(out_shared.entropy().detach()) == pytest.approx(3 * (math.log(0.3) + 0.5 * math.log(2 * math.pi * math.e)))
    action = torch.zeros(5, 3)
    torch.testing.assert_close(out_shared.log_prob(action), out_per_dim.log_prob(action))
    out_shared.log_prob(action).sum().backward()
    out_per_dim.log_prob(action).sum().backward()
    torch.testing.assert_close(shared.log_std.grad, per_dim.log_std.grad.sum().reshape(1))
