"""'whole' memory: one causal pass over every working memory since the last clear in the
update, a key/value cache while acting. The two must agree, and agree with the paper's windows
when a window holds the whole trial."""

import dataclasses

import numpy as np
import pytest
import torch

from trmrl.algos.trmrl import TrMRLPolicy, WholeMemoryPolicy, make_batch, make_sequences
from trmrl.attention import sequence_attention_by_age
from trmrl.config import PPOConfig
from trmrl.errors import ConfigError
from trmrl.nets.policy import ActorCritic, ModelConfig
from trmrl.nets.transformer import CausalTransformer, KVCache
from trmrl.protocols import Starts
from trmrl.rollout import cut_sequences
from trmrl.sampler import TrialSampler
from trmrl.tasks import make_task_distribution

WHOLE = ModelConfig(d_model=16, n_heads=4, d_ff=32, n_layers=2, memory="whole", memory_scope="trial")
EPISODES, HORIZON = 3, 7  # trials of 21 steps: past the cache's first capacity (16), so it grows


def collect(policy, steps):
    """Point-nav trials of 3 episodes x 7 steps for 3 tasks, `steps` long (a new trial starts
    after step 20)."""
    distribution = make_task_distribution("point-nav")
    sampler = TrialSampler(distribution, 3, EPISODES, HORIZON)
    tasks = distribution.sample(np.random.default_rng(0), 3, "train")
    return sampler.collect(policy, tasks, [1, 2, 3], [torch.Generator().manual_seed(i) for i in range(3)], steps=steps)


def whole_model(config=WHOLE, seed=0):
    distribution = make_task_distribution("point-nav")
    sampler = TrialSampler(distribution, 1, EPISODES, HORIZON)
    return ActorCritic(sampler.obs_dim, sampler.act_dim, config, torch.Generator().manual_seed(seed))


def test_cut_sequences_by_hand():
    cut = torch.tensor([[1, 1], [0, 0], [0, 1], [1, 0], [0, 0]], dtype=torch.bool)  # (T=5, B=2)
    s = cut_sequences(cut)
    # env 0: steps 0-2, 3-4; env 1: steps 0-1, 2-4
    assert s.env.tolist() == [0, 0, 1, 1]
    assert s.length.tolist() == [3, 2, 2, 3]
    assert s.time.T.tolist() == [[0, 1, 2], [3, 4, 4], [0, 1, 1], [2, 3, 4]]  # padding repeats the last step
    assert s.valid.T.tolist() == [[True, True, True], [True, True, False], [True, True, False], [True, True, True]]
    x = torch.arange(10.0).view(5, 2)
    assert s.gather(x)[:, 1].tolist() == [6.0, 8.0, 8.0]


@pytest.mark.parametrize("scope,share,positions,context", [
    ("trial", False, "sinusoidal", None),
    ("episode", True, "sinusoidal", None),
    ("trial", True, "alibi", 5),
    ("trial", False, "rotary", None),
    ("trial", True, "none", 4),
])
def test_one_causal_pass_equals_acting_with_the_cache(scope, share, positions, context):
    """The update's log-probs and values, from one pass per sequence, equal those the policy had
    while acting step by step with its cache: across inner episode boundaries, a new trial
    (step 21), and, with a context cap, a cache that rolls."""
    config = dataclasses.replace(WHOLE, memory_scope=scope, share_network=share, positions=positions, context=context)
    model = whole_model(config)
    policy = WholeMemoryPolicy(model, scope)
    rollout = collect(policy, steps=EPISODES * HORIZON + 9)
    assert rollout.trial_start[EPISODES * HORIZON].all() and rollout.episode_start[HORIZON].all()
    batch = make_sequences(rollout, PPOConfig(), policy)
    assert len(batch) == 3 * (EPISODES + 2 if scope == "episode" else 2)
    with torch.no_grad():
        memory = model.sequence_memories(batch.inputs, batch.lengths)[batch.valid]
        out = model.output(memory, batch.inputs[batch.valid])
    torch.testing.assert_close(out.log_prob(batch.actions[batch.valid]), batch.log_probs[batch.valid], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.value, batch.values[batch.valid], atol=1e-5, rtol=0)


@pytest.mark.parametrize("scope", ["trial", "episode"])
def test_whole_memory_equals_a_window_as_long_as_the_trial(scope):
    """With the paper's positions and no cap, 'whole' memory is the window of the trial length,
    exactly (the same weights: the model's init does not depend on the window)."""
    whole = whole_model(dataclasses.replace(WHOLE, memory_scope=scope))
    window = whole_model(dataclasses.replace(WHOLE, memory="window", window=EPISODES * HORIZON, memory_scope=scope))
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), window.state_dict().values()))
    rollout = collect(WholeMemoryPolicy(whole, scope), steps=EPISODES * HORIZON + 4)
    batch = make_batch(rollout, PPOConfig(), TrMRLPolicy(window, scope))
    with torch.no_grad():
        out = window(batch.windows, batch.lengths)
    torch.testing.assert_close(out.log_prob(batch.actions), rollout.log_probs.reshape(-1), atol=1e-5, rtol=0)


def test_a_trial_start_clears_the_cache():
    """Env 0 starts a trial at step 3, env 1 at step 5: from there each acts as a fresh policy
    fed only what came since, and what came before is gone."""
    model = whole_model()
    policy = WholeMemoryPolicy(model, "trial")
    inputs = torch.randn(8, 2, model.obs_dim, generator=torch.Generator().manual_seed(3))
    restart = torch.zeros(8, 2, dtype=torch.bool)
    restart[0], restart[3, 0], restart[5, 1] = True, True, True
    state, steps = policy.initial_state(2), []
    for t in range(8):
        step, state = policy.act(inputs[t], state, Starts(restart[t], restart[t]), None, deterministic=True)
        steps.append(step.actions)
    for env, start in ((0, 3), (1, 5)):
        fresh, expected = policy.initial_state(1), []
        for t in range(start, 8):
            first = torch.tensor([t == start])
            step, fresh = policy.act(inputs[t, env : env + 1], fresh, Starts(first, first), None, deterministic=True)
            expected.append(step.actions[0])
        torch.testing.assert_close(torch.stack([s[env] for s in steps[start:]]), torch.stack(expected), atol=1e-6,
                                   rtol=0)
    assert state.seen.tolist() == [5, 3] and state.length.tolist() == [5, 3]


def test_value_reads_the_cache_without_changing_it():
    model = whole_model(dataclasses.replace(WHOLE, share_network=True))
    policy = WholeMemoryPolicy(model, "trial")
    x = torch.randn(4, 2, model.obs_dim, generator=torch.Generator().manual_seed(5))
    start, going = Starts(torch.ones(2, dtype=torch.bool), torch.ones(2, dtype=torch.bool)), \
        Starts(torch.zeros(2, dtype=torch.bool), torch.zeros(2, dtype=torch.bool))
    state = policy.initial_state(2)
    _, state = policy.act(x[0], state, start, None, deterministic=True)
    before = state.copy()
    v = policy.value(x[1], state, going)
    assert all(torch.equal(a, b) for a, b in zip(state.keys + [state.length], before.keys + [before.length]))
    step, _ = policy.act(x[1], state, going, None, deterministic=True)
    torch.testing.assert_close(v, step.values)  # the value of the same input, pushed for real


def test_capped_cache_keeps_the_last_context_tokens():
    net = CausalTransformer(8, 2, 16, 1, max_len=1)
    cache = KVCache.empty(1, 1, 2, 4, context=3)
    for _ in range(5):
        net.step(torch.randn(1, 8), cache)
    assert cache.capacity == 3 and cache.length.tolist() == [3] and cache.positions.tolist() == [[2, 3, 4]]


def test_attention_over_the_trial_by_age_sums_to_one_over_existing_memories():
    model = whole_model()
    inputs = torch.randn(2, 6, model.obs_dim)
    weights = sequence_attention_by_age(model, inputs, torch.tensor([6, 4]))  # (S, L, layers, heads, ages)
    assert weights.shape == (2, 6, 2, 4, 6)
    np.testing.assert_allclose(np.nansum(weights[0], axis=-1), 1.0, atol=1e-5)
    assert np.isnan(weights[0, 2, :, :, 3:]).all() and not np.isnan(weights[0, 2, :, :, :3]).any()
    assert np.isnan(weights[1, 4:]).all()  # padding


@pytest.mark.parametrize("changes,message", [
    ({"positions": "alibi"}, "model.memory 'whole' only"),
    ({"memory": "whole", "context": 0}, "model.context must be >= 1"),
    ({"memory": "whole", "positions": "rotary", "d_model": 12, "n_heads": 4}, "even head width"),
])
def test_whole_memory_settings_are_checked(changes, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**changes)


def test_the_learning_rate_decays_at_the_epochs_the_config_names():
    """Minibatches of whole trials make fewer gradient steps per epoch than windows: the decay's
    clock counts them, so it starts at ppo.decay_epoch_start whatever the memory."""
    from conftest import tiny_config

    from trmrl.algos.trmrl import TrMRL
    from trmrl.tasks import make_task_distribution

    ppo = dataclasses.replace(tiny_config().ppo, policy_lr_decay=True, decay_epoch_start=2, decay_epoch_end=4,
                              min_lr_factor=0.25)
    config = tiny_config(ppo=ppo, model=dataclasses.replace(tiny_config().model, memory="whole"))
    learner = TrMRL(config, make_task_distribution("point-nav"))
    # 8 trials of 10 steps, 3 per minibatch of 32 samples: 3 minibatches x 2 passes
    assert learner.steps_per_epoch == 6
    schedule = learner.schedules[0]
    factors = [schedule(epoch * 6) / schedule.lr for epoch in range(6)]
    assert factors == pytest.approx([1.0, 1.0, 0.5, 0.25, 0.25, 0.25])
