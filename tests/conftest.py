import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from trmrl.algos import make_config, with_algorithm
from trmrl.config import EvalConfig, PPOConfig, TaskConfig, TrainConfig
from trmrl.evaluate import MetaTester, resolve_protocol
from trmrl.nets.policy import ModelConfig
from trmrl.protocols import Starts, Step
from trmrl.tasks import make_task_distribution


@pytest.fixture(autouse=True)
def _single_thread():
    # identical float results across runs need a fixed thread count
    torch.set_num_threads(1)


def without_timing(records: list[dict]) -> list[dict]:
    """Metric records without wall-clock figures (seconds, steps/s): what two equal runs share."""
    return [{k: v for k, v in r.items() if not (k.startswith("time/") or k.endswith("sps") or "per_s" in k)}
            for r in records]


def tiny_config(**changes) -> TrainConfig:
    """A point-nav run small enough for unit tests: 8 tasks x 2 episodes x 5 steps per epoch."""
    config = make_config(
        "trmrl",
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
    algo = changes.pop("algo", None)
    if algo is not None:  # another algorithm on the same trials (PPO's settings carried over)
        config = with_algorithm(config, algo)
    return dataclasses.replace(config, **changes)


class ConstantPolicy:
    """A memoryless agent at its best on point-nav: the same action at every step, whatever it
    observes (`Policy[None]`)."""

    def __init__(self, action: Sequence[float]) -> None:
        self.action = torch.tensor(action, dtype=torch.float32)

    def initial_state(self, n: int) -> None:
        return None

    def act(self, inputs, state, starts: Starts, generators, deterministic: bool = False) -> tuple[Step, None]:
        zeros = torch.zeros(len(inputs))
        return Step(self.action.expand(len(inputs), -1), zeros, zeros), None

    def value(self, inputs, state, starts: Starts):
        return torch.zeros(len(inputs))


class GoToPolicy:
    """A memoryless agent at its best on point-nav-xy, where it observes its position: it heads
    for one fixed point and stays there, whatever the task (`Policy[None]`)."""

    def __init__(self, target: Sequence[float], step_size: float) -> None:
        self.target, self.step_size = torch.tensor(target, dtype=torch.float32), step_size

    def initial_state(self, n: int) -> None:
        return None

    def act(self, inputs, state, starts: Starts, generators, deterministic: bool = False) -> tuple[Step, None]:
        position = inputs[:, :2]  # the trial input begins with the observation
        zeros = torch.zeros(len(inputs))
        return Step(((self.target - position) / self.step_size).clamp(-1.0, 1.0), zeros, zeros), None

    def value(self, inputs, state, starts: Starts):
        return torch.zeros(len(inputs))


def memoryless_return(config: TrainConfig) -> float:
    """The best a learner without memory scores on the run's final meta-test tasks (the tasks its
    `return_per_episode` was measured on): on point-nav the best of a grid of constant actions,
    on point-nav-xy the best of a grid of fixed points to go to, around the goals' mean (and
    standing still). Each evaluation takes about 0.1 s."""
    t = config.task
    arc = math.radians(t.goal_arc)
    mean = np.array([math.sin(arc), 1 - math.cos(arc)]) * t.goal_radius / arc  # of r (cos a, sin a), a ~ U[0, arc]
    if t.name == "point-nav":  # a constant velocity: towards the goals' mean, or none
        heading = mean / max(np.linalg.norm(mean), 1e-9)
        velocities = [(0.0, 0.0)] + [tuple(speed * heading + side * np.array([-heading[1], heading[0]]))
                                     for speed in (0.5, 0.54, 0.58) for side in (-0.1, 0.0, 0.1)]
        return max(policy_return(config, ConstantPolicy(v)) for v in velocities)
    assert t.name == "point-nav-xy", t.name
    return max(policy_return(config, GoToPolicy(p, t.step_size)) for p in [(0.0, 0.0)] + [
        (mean[0] + dx, mean[1] + dy) for dx in (-0.2, -0.1, 0.0, 0.1, 0.2) for dy in (-0.1, 0.0, 0.1, 0.2, 0.3)])


def policy_return(config: TrainConfig, policy) -> float:
    """The mean return of a fixed `policy` on the run's final meta-test tasks."""
    e = config.eval
    protocol = resolve_protocol("adaptation", config.task.name, n_tasks=e.final_n_tasks, episodes=e.final_episodes,
                                deterministic=e.deterministic)
    tester = MetaTester(make_task_distribution(config.task.name, **config.task_options()), protocol,
                        config.task.max_episode_steps, e.seed)
    try:
        return float(tester.run(policy).returns.mean())
    finally:
        tester.close()
