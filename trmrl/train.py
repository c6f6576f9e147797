"""Meta-training: sample tasks -> collect trials -> GAE -> PPO update -> log -> meta-test ->
checkpoint."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from trmrl import checkpoint
from trmrl.config import TrainConfig, to_dict
from trmrl.errors import CheckpointError, DivergenceError
from trmrl.evaluate import MetaTester, RandomPolicy, during_training, final_test
from trmrl.log import MetricLogger, versions, write_json
from trmrl.nets.policy import ActorCritic
from trmrl.ppo import lr_factor, make_batch, ppo_update
from trmrl.sampler import Rollout, TrialSampler
from trmrl.seeding import Stream, env_seeds, numpy_rng, torch_generator
from trmrl.tasks import TaskDistribution, make_task_distribution

CHECKPOINT = "checkpoint.pt"


@dataclass
class Learner:
    """The model and its two optimisers (policy phase, value phase)."""

    model: ActorCritic
    policy_optimizer: torch.optim.AdamW
    value_optimizer: torch.optim.AdamW

    @classmethod
    def create(cls, config: TrainConfig, obs_dim: int, act_dim: int) -> Learner:
        model = ActorCritic(obs_dim, act_dim, config.model, torch_generator(config.seed, Stream.INIT))
        wd = config.ppo.weight_decay
        return cls(
            model,
            # fused: one kernel for all parameters (the per-parameter loop costs ~1.7 ms a step here)
            torch.optim.AdamW(model.policy_parameters(), lr=config.ppo.policy_lr, weight_decay=wd, fused=True),
            torch.optim.AdamW(model.value_parameters(), lr=config.ppo.value_lr, weight_decay=wd, fused=True),
        )

    def set_learning_rates(self, config: TrainConfig, epoch: int) -> dict[str, float]:
        p = config.ppo
        factor = lr_factor(epoch, p.decay_epoch_start, p.decay_epoch_end, p.min_lr_factor)
        rates = {
            "charts/policy_lr": p.policy_lr * (factor if p.policy_lr_decay else 1.0),
            "charts/value_lr": p.value_lr * (factor if p.value_lr_decay else 1.0),
        }
        for group in self.policy_optimizer.param_groups:
            group["lr"] = rates["charts/policy_lr"]
        for group in self.value_optimizer.param_groups:
            group["lr"] = rates["charts/value_lr"]
        return rates

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "policy_optimizer": self.policy_optimizer.state_dict(),
                "value_optimizer": self.value_optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.policy_optimizer.load_state_dict(state["policy_optimizer"])
            self.value_optimizer.load_state_dict(state["value_optimizer"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint does not match its config: {str(exc).splitlines()[0]}") from exc


def make_sampler(config: TrainConfig, distribution: TaskDistribution) -> TrialSampler:
    t, m = config.task, config.model
    return TrialSampler(distribution, t.tasks_per_epoch, t.episodes_per_trial, t.max_episode_steps,
                        m.window, m.memory_scope)


def rollout_metrics(rollout: Rollout) -> dict[str, float]:
    """Mean return of the episodes and trials that ended in this rollout."""
    episodes = int(rollout.episode_end.sum())
    trials = int(rollout.trial_end.sum())
    total = float(rollout.rewards.sum())
    return {"charts/episode_return": total / max(episodes, 1), "charts/trial_return": total / max(trials, 1),
            "charts/episodes": float(episodes)}


def train(config: TrainConfig, run_dir: Path, *, resume: bool = False, max_epochs: int | None = None) -> dict[str, Any]:
    """Meta-train into `run_dir` (continuing its checkpoint if `resume`); `max_epochs` stops
    early, as an interruption would. Returns the final meta-test summary (if training ended)."""
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    distribution = make_task_distribution(config.task.name)
    sampler = make_sampler(config, distribution)
    learner = Learner.create(config, sampler.obs_dim, sampler.act_dim)
    start = 0
    if resume:
        state = checkpoint.load(run_dir / CHECKPOINT)
        learner.load_state_dict(state)
        start = int(state["epoch"])
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", to_dict(config))
        write_json(run_dir / "versions.json", versions())
    logger = MetricLogger(run_dir, completed_epochs=start if resume else None)
    m, e = config.model, config.eval
    tester = MetaTester(distribution, during_training(e.n_tasks, e.episodes, e.deterministic),
                        config.task.max_episode_steps, m.window, m.memory_scope, config.seed)
    end = config.n_epochs if max_epochs is None else min(config.n_epochs, start + max_epochs)
    steps = config.steps_per_epoch
    bar = tqdm(total=config.n_epochs * steps, initial=start * steps, unit="step", unit_scale=True,
               disable=not config.progress, dynamic_ncols=True, desc=config.preset)
    try:
        for epoch in range(start, end):
            metrics: dict[str, float] = {}
            if e.every_epochs and epoch % e.every_epochs == 0:
                metrics |= tester.run(learner.model, index=epoch).metrics()
            t0 = time.perf_counter()
            tasks = distribution.sample(numpy_rng(config.seed, Stream.TRAIN_TASKS, epoch), config.task.tasks_per_epoch)
            rollout = sampler.collect(learner.model, tasks, env_seeds(config.seed, Stream.TRAIN_ENVS, epoch, len(tasks)),
                                      torch_generator(config.seed, Stream.TRAIN_ACTIONS, epoch))
            t1 = time.perf_counter()
            metrics |= learner.set_learning_rates(config, epoch)
            batch = make_batch(rollout, config.ppo, m.window, m.memory_scope)
            metrics |= ppo_update(learner.model, learner.policy_optimizer, learner.value_optimizer, batch,
                                  config.ppo, torch_generator(config.seed, Stream.MINIBATCHES, epoch))
            t2 = time.perf_counter()
            metrics |= rollout_metrics(rollout) | {
                "time/sampling": t1 - t0, "time/update": t2 - t1,
                "charts/sampling_sps": rollout.num_steps / (t1 - t0),
                "charts/update_samples_per_s": len(batch) / (t2 - t1)}
            logger.log(epoch, (epoch + 1) * steps, metrics)
            if (epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == end:
                checkpoint.save(run_dir / CHECKPOINT, {"epoch": epoch + 1, "env_steps": (epoch + 1) * steps,
                                                       "config": to_dict(config), **learner.state_dict()})
            bar.update(steps)
            bar.set_postfix(ret=f"{metrics['charts/episode_return']:.3g}", sps=f"{steps / (t2 - t0):.0f}")
    except DivergenceError as exc:
        saved = run_dir / CHECKPOINT
        kept = f"last good checkpoint kept at {saved}" if saved.exists() else "no checkpoint was written yet"
        raise DivergenceError(f"training stopped at epoch {epoch}: {exc}; {kept}") from exc
    finally:
        bar.close()
        logger.close()
    if end < config.n_epochs:
        return {}
    return final_meta_test(config, learner.model, distribution, run_dir)


def final_meta_test(config: TrainConfig, model: ActorCritic, distribution: TaskDistribution, run_dir: Path) -> dict[str, Any]:
    """The fast-adaptation protocol on held-out tasks, beside a random policy on the same tasks;
    written to RUN_DIR/eval/adaptation.{json,csv} and eval/adaptation-random.{json,csv}."""
    e, m = config.eval, config.model
    tester = MetaTester(distribution, final_test(e.final_n_tasks, e.final_episodes, e.deterministic),
                        config.task.max_episode_steps, m.window, m.memory_scope, config.seed)
    result = tester.run(model)
    space = tester.sampler.envs[0].action_space
    random = tester.run(RandomPolicy(space.low, space.high))
    result.write(run_dir / "eval", "adaptation")
    random.write(run_dir / "eval", "adaptation-random")
    return {
        "n_tasks": e.final_n_tasks, "episodes": e.final_episodes, "deterministic": e.deterministic,
        "return_per_episode": np.nanmean(result.returns, axis=0).tolist(),
        "random_return_per_episode": np.nanmean(random.returns, axis=0).tolist(),
    }


def load_trained(path: Path) -> tuple[TrainConfig, ActorCritic, Path]:
    """(config, model, run directory) from a run directory or a checkpoint file in one."""
    from trmrl.config import from_dict
    from trmrl.errors import ConfigError

    file = path if path.is_file() else path / CHECKPOINT
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    state = checkpoint.load(file)
    try:
        config = from_dict(TrainConfig, state["config"])
    except (KeyError, TypeError, ConfigError) as exc:
        raise CheckpointError(f"{file} holds an incompatible config: {exc}") from None
    distribution = make_task_distribution(config.task.name)
    env = distribution.make_env()
    from trmrl.trial import augmented_dim

    learner = Learner.create(config, augmented_dim(env.observation_space.shape[0], env.action_space.shape[0]),
                             env.action_space.shape[0])
    learner.load_state_dict(state)
    learner.model.eval()
    return config, learner.model, file.parent
