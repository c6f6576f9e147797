"""Presets carry the paper's values (docs/paper.md section 2) and stay consistent."""

import dataclasses

import pytest

from trmrl.errors import ConfigError
from trmrl.presets import PRESETS, get_preset


def test_cheetah_vel_preset_matches_the_paper_table():
    c = get_preset("cheetah-vel")
    m, p, t = c.model, c.ppo, c.task
    assert (m.d_model, m.n_heads, m.d_ff, m.n_layers, m.window) == (128, 16, 512, 4, 5)
    assert (t.tasks_per_epoch, t.episodes_per_trial, t.max_episode_steps) == (20, 2, 200)
    assert (p.gamma, p.gae_lambda, p.clip_coef, p.minibatch_size, p.update_epochs) == (0.9, 0.8, 0.1, 256, 10)
    assert (p.policy_lr, p.value_lr, p.policy_lr_decay, p.value_lr_decay) == (3e-5, 2.5e-4, True, False)
    assert (p.decay_epoch_start, p.decay_epoch_end, p.min_lr_factor) == (100, 750, 0.1)
    assert (m.share_network, m.init_std, m.output_weights_scale) == (False, 0.2, 1.0)
    assert (p.weight_decay, p.norm_adv, p.value_loss, p.max_grad_norm, p.ent_coef) == (0.01, False, "nll", None, 0.0)
    assert m.memory_scope == "episode" and m.tfixup == "code" and c.n_epochs == 2500


def test_ant_dir_preset_matches_the_paper_table():
    c = get_preset("ant-dir")
    assert (c.ppo.gamma, c.ppo.clip_coef, c.ppo.decay_epoch_start, c.ppo.decay_epoch_end) == (0.92, 0.2, 500, 3500)
    assert (c.model.share_network, c.model.init_std, c.model.output_weights_scale) == (True, 0.5, 0.01)


def test_metaworld_presets_match_the_paper_table():
    for name, task, tasks_per_epoch in (("ml1-reach", "ml1/reach-v3", 25), ("ml1-push", "ml1/push-v3", 25),
                                        ("ml1-pick-place", "ml1/pick-place-v3", 25), ("ml10", "ml10", 20),
                                        ("ml45", "ml45", 45)):
        c = get_preset(name)
        m, p, t = c.model, c.ppo, c.task
        assert t.name == task and (t.tasks_per_epoch, t.episodes_per_trial, t.max_episode_steps) == (tasks_per_epoch, 10, 500)
        assert (m.d_model, m.n_heads, m.d_ff, m.n_layers, m.window, m.memory_scope) == (32, 4, 128, 4, 5, "episode")
        assert (p.gamma, p.gae_lambda, p.clip_coef, p.minibatch_size, p.policy_lr, p.value_lr) == (0.9, 0.95, 0.2, 32, 5e-5, 5e-5)
        assert not (p.policy_lr_decay or p.value_lr_decay or p.norm_adv) and p.weight_decay == 0.01
        assert (m.share_network, m.init_std, m.output_weights_scale) == (False, 1.0, 0.01)
        assert t.reward_function_version == "v2"


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_names_itself_and_its_task(name):
    config = get_preset(name)
    assert config.preset == name and config.task.name.replace("/", "-").removesuffix("-v3") == name


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset"):
        get_preset("cheetah-speed")


def test_maml_presets_carry_the_published_settings_on_the_presets_episodes():
    from trmrl.presets import ALGO_PRESETS

    cheetah = get_preset("cheetah-vel", "maml")
    m = cheetah.maml
    # ProMP's MAML-TRPO defaults: 40 tasks x 20 episodes, MLP (64, 64), inner lr 0.1, KL 0.01
    assert (cheetah.task.tasks_per_epoch, m.rollouts_per_task, m.hidden_sizes) == (40, 20, (64, 64))
    assert (m.inner_lr, m.inner_steps, m.max_kl, m.gamma, m.gae_lambda) == (0.1, 1, 0.01, 0.99, 1.0)
    assert get_preset("ml45", "maml").task.tasks_per_epoch == 45
    for (name, algo), (_, config) in ALGO_PRESETS.items():
        base = get_preset(name)
        # the same episodes and evaluation as the algorithm the preset was written for, and the
        # same budget for the on-policy ones (PEARL's: where the paper's PEARL curves end)
        assert config.algo == algo and config.preset == name
        assert (config.task.name, config.task.max_episode_steps) == (base.task.name, base.task.max_episode_steps)
        assert dataclasses.replace(config.eval, every_epochs=0, episodes=2) == \
            dataclasses.replace(base.eval, every_epochs=0, episodes=2)
        assert algo == "pearl" or (config.total_env_steps, config.eval) == (base.total_env_steps, base.eval)
