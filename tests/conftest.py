import dataclasses

import pytest
import torch

from trmrl.config import EvalConfig, ModelConfig, PPOConfig, TaskConfig, TrainConfig


@pytest.fixture(autouse=True)
def _single_thread():
    # identical float results across runs need a fixed thread count
    torch.set_num_threads(1)


def tiny_config(**changes) -> TrainConfig:
    """A point-nav run small enough for unit tests: 8 tasks x 2 episodes x 5 steps per epoch."""
    config = TrainConfig(
        preset="point-nav",
        seed=3,
        total_env_steps=4 * 80,
        task=TaskConfig(name="point-nav", episodes_per_trial=2, max_episode_steps=5, tasks_per_epoch=8),
        model=ModelConfig(d_model=16, n_heads=2, d_ff=32, n_layers=2, window=3, memory_scope="trial",
                          share_network=True),
        ppo=PPOConfig(update_epochs=2, minibatch_size=32),
        eval=EvalConfig(every_epochs=2, n_tasks=4, episodes=2, final_n_tasks=4, final_episodes=3),
        checkpoint_every=1,
        progress=False,
    )
    return dataclasses.replace(config, **changes)
