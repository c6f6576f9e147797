"""Typed, frozen configuration. Every field's docstring is its `--help` text.

A run's config (`TrainConfig`) is its settings (`RunSettings`: seed, budget, task, evaluation,
...) and exactly one algorithm's config (`agent`, an `AlgorithmConfig` that the algorithm's
module declares: its sections and budget arithmetic). Presets (`trmrl.presets`) are values of
it; the command line overrides any field of the run and of its algorithm, e.g.
`trmrl train cheetah-vel --seed 2 --model.window 1 --total-env-steps 200000`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import tyro

from trmrl.errors import ConfigError

ValueLoss = Literal["nll", "mse"]


def require(condition: bool, message: str) -> None:
    """One ConfigError line unless `condition`."""
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class TaskConfig:
    """The task distribution and the shape of a trial."""

    name: str = "point-nav"
    """Task distribution: a registered name (`trmrl presets` lists them; `trmrl.tasks.register`
    adds one)."""
    episodes_per_trial: int = 2
    """E: episodes on the same task that form one trial (RL^2)."""
    min_episodes_per_trial: int | None = None
    """Training trials of a random length: each draws its number of episodes uniformly from
    min_episodes_per_trial..episodes_per_trial (None: always episodes_per_trial). An epoch's
    rollout stays E * H steps per task, a new trial on the task starting where one ends; the
    meta-tests keep their protocols' trials."""
    max_episode_steps: int = 20
    """H: time limit of one episode (a truncation, not a termination)."""
    tasks_per_epoch: int = 32
    """B: tasks sampled per epoch, one trial each, stepped as one batch."""
    vector_env: Literal["sync", "async", "split"] = "sync"
    """How the B trial envs are stepped: one after the other in this process ('sync'); split into
    one shard per core, this process stepping the first while a worker process each steps the
    others ('split', one pipe crossing per worker and step); or each in its own subprocess
    ('async', gymnasium's AsyncVectorEnv). All give the same data. On 2 cores async was slower
    even for MetaWorld (0.57-0.86x, `benchmarks/metaworld_speed.py`); split is measured in
    `benchmarks/sampler.py`."""
    reward_function_version: Literal["v1", "v2"] = "v2"
    """MetaWorld tasks only: the reward family (metaworld's default 'v2', the paper's setting)."""
    remembered_action: Literal["applied", "sampled"] = "applied"
    """MetaWorld tasks only: the a_{t-1} a memory sees: the action clipped to [-1, 1] as the
    simulator applied it ('applied'), or the raw sample of the policy ('sampled', the author's
    RL2Env, which the MetaWorld presets follow). Other tasks report what their env applied."""
    goal_radius: float = 1.0
    """point-nav only: distance of the goals from the start."""
    goal_arc: float = 180.0
    """point-nav only: the goals' angles are uniform on [0, goal_arc] degrees (180: the upper half
    circle; 360: the whole circle)."""
    step_size: float = 0.1
    """point-nav only: the largest move per axis and step."""

    def __post_init__(self) -> None:
        from trmrl.tasks import check_task_name

        check_task_name(self.name)
        require(self.episodes_per_trial >= 1, "task.episodes_per_trial must be >= 1")
        require(self.min_episodes_per_trial is None or 1 <= self.min_episodes_per_trial <= self.episodes_per_trial,
                f"task.min_episodes_per_trial must be in 1..task.episodes_per_trial ({self.episodes_per_trial})")
        require(self.max_episode_steps >= 1, "task.max_episode_steps must be >= 1")
        require(self.tasks_per_epoch >= 1, "task.tasks_per_epoch must be >= 1")
        require(self.goal_radius > 0, f"task.goal_radius must be > 0 (got {self.goal_radius})")
        require(0 < self.goal_arc <= 360, f"task.goal_arc must be in (0, 360] degrees (got {self.goal_arc})")
        require(self.step_size > 0, f"task.step_size must be > 0 (got {self.step_size})")

    @property
    def steps_per_trial(self) -> int:
        """T = E * H: the longest a trial can be (episodes may end early on termination)."""
        return self.episodes_per_trial * self.max_episode_steps


@dataclass(frozen=True)
class PPOConfig:
    """PPO over trials (docs/paper.md section 2). Each departure from the paper is a switch."""

    gamma: float = 0.95
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    clip_coef: float = 0.2
    """PPO ratio clip epsilon."""
    ent_coef: float = 0.0
    """Entropy bonus coefficient (paper: 0)."""
    update_epochs: int = 10
    """Passes over the epoch's samples, for the policy phase and again for the value phase."""
    minibatch_size: int = 256
    """Timesteps per gradient step: TrMRL's windows (each an independent sample), or RL^2's
    chunks of rl2.bptt_chunk steps (minibatch_size // bptt_chunk chunks)."""
    policy_lr: float = 3e-4
    """Policy learning rate (AdamW)."""
    value_lr: float = 3e-4
    """Value-function learning rate (AdamW)."""
    policy_lr_decay: bool = False
    """Geometric policy LR decay from epoch decay_epoch_start to decay_epoch_end."""
    value_lr_decay: bool = False
    """Geometric value LR decay on the same schedule."""
    decay_epoch_start: int = 0
    """e0: first epoch at which the LR is multiplied by the per-epoch decay factor."""
    decay_epoch_end: int = 1
    """e1: the decay stops after epoch e1 - 1, leaving lr * min_lr_factor."""
    min_lr_factor: float = 1.0
    """Final LR as a fraction of the initial one."""
    weight_decay: float = 0.0
    """AdamW weight decay (paper: 0.01, torch 1.7's default)."""
    norm_adv: bool = True
    """Normalise advantages per minibatch (paper: off; VariBAD's MuJoCo presets: once over the
    epoch's samples, `varibad.norm_adv_per_batch`)."""
    value_loss: ValueLoss = "mse"
    """'nll': Gaussian negative log-likelihood of the return with a learned sigma (paper);
    'mse': half squared error."""
    max_grad_norm: float | None = None
    """Clip the global gradient norm at this value (paper: no clipping)."""
    gae_across_episodes: bool = True
    """GAE and returns run over the whole trial, so credit crosses the inner episode boundary
    (paper). False cuts them at every episode end."""
    bootstrap_truncation: bool = True
    """At a time limit, bootstrap from the value of the final observation. The paper's code
    instead treats the trial's end as terminal (Monte-Carlo returns, value 0 past the end)."""
    compile: bool = False
    """Run each minibatch step (forward and backward passes, clipping, the AdamW step) as one
    compiled graph (`torch.compile`; TrMRL's window memory, one process): the same minibatches
    and arithmetic, equal to the eager step at float rounding, several times faster on small
    minibatches (benchmarks/README.md). Compiling takes about a minute per phase when a run
    starts."""

    def __post_init__(self) -> None:
        require(0.0 < self.gamma <= 1.0, "ppo.gamma must be in (0, 1]")
        require(0.0 <= self.gae_lambda <= 1.0, "ppo.gae_lambda must be in [0, 1]")
        require(self.clip_coef > 0.0, "ppo.clip_coef must be > 0")
        require(self.update_epochs >= 1, "ppo.update_epochs must be >= 1")
        require(self.minibatch_size >= 1, "ppo.minibatch_size must be >= 1")
        require(self.policy_lr > 0 and self.value_lr > 0, "ppo learning rates must be > 0")
        require(0.0 < self.min_lr_factor <= 1.0, "ppo.min_lr_factor must be in (0, 1]")
        require(
            0 <= self.decay_epoch_start < self.decay_epoch_end,
            "ppo.decay_epoch_start must be >= 0 and < ppo.decay_epoch_end",
        )
        require(self.max_grad_norm is None or self.max_grad_norm > 0, "ppo.max_grad_norm must be > 0")


@dataclass(frozen=True)
class EvalConfig:
    """Meta-testing: trials on tasks from a held-out seed stream, never the training stream."""

    every_epochs: int = 5
    """Run the during-training protocol every this many epochs (0: never)."""
    same_tasks: bool = True
    """Every during-training meta-test on the same held-out tasks, resets and action streams, so
    that curves compare on the same tasks at every point, across training seeds and across
    algorithms of any epoch size (off: fresh tasks at each meta-test, drawn by epoch index, as
    runs whose config.json predates this field)."""
    n_tasks: int = 30
    """Tasks of the during-training protocol (paper: 30 tasks x 2 episodes, mean actions)."""
    episodes: int = 2
    """Episodes per trial of the during-training protocol."""
    final_n_tasks: int = 20
    """Tasks of the meta-test after training (paper's fast-adaptation protocol: 20 x 6)."""
    final_episodes: int = 6
    """Episodes per trial of the meta-test after training."""
    final: bool = True
    """Meta-test after training (fast adaptation, OOD, MetaWorld's protocol); off: only the
    during-training tests, `trmrl eval RUN_DIR` tests later (sweeps, speed runs)."""
    deterministic: bool = True
    """Act with the policy mean (paper) instead of sampling."""
    seed: int = 0
    """Seed of the meta-test tasks, resets and actions, independent of the training seed, so
    that runs of several training seeds are tested on the same held-out tasks."""
    also: tuple[str, ...] = ()
    """Named protocols (`trmrl eval --help`) run as they are defined beside the during-training one
    at every meta-test, logged as `meta_test/<protocol>/return` and `/success`, and after
    training beside the final ones (the MetaWorld presets: 'paper-metaworld', the paper's
    measurement)."""

    def __post_init__(self) -> None:
        require(self.every_epochs >= 0, "eval.every_epochs must be >= 0")
        for name in ("n_tasks", "episodes", "final_n_tasks", "final_episodes"):
            require(getattr(self, name) >= 1, f"eval.{name} must be >= 1")


@dataclass(frozen=True)
class AlgorithmConfig:
    """An algorithm's own part of a run's config: its sections (the fields of a subclass, e.g.
    TrMRL's `model` and `ppo`), and the budget arithmetic that depends on them. Each algorithm
    declares one (`trmrl/algos/`), with its registry name in `name`; a run holds exactly one."""

    name: ClassVar[str] = ""

    def steps_per_epoch(self, task: TaskConfig) -> int:
        """Environment steps collected per epoch."""
        raise NotImplementedError

    def initial_env_steps(self, task: TaskConfig) -> int:
        """Steps collected once before the first epoch's own (e.g. PEARL's initial pool)."""
        return 0

    trials_of_random_length: ClassVar[bool] = False
    """Its sampler can train on trials of a random number of episodes (`task.min_episodes_per_trial`)."""

    def check(self, task: TaskConfig) -> None:
        """Refuse settings that contradict the task's trial shape (one ConfigError line)."""


@dataclass(frozen=True)
class OnPolicyConfig(AlgorithmConfig):
    """PPO over trials (TrMRL, RL^2, VariBAD): an epoch is B trials of T steps, PPO's minibatches
    drawn from its samples."""

    ppo: PPOConfig = field(default_factory=PPOConfig)
    trials_of_random_length: ClassVar[bool] = True

    def steps_per_epoch(self, task: TaskConfig) -> int:
        return task.tasks_per_epoch * task.steps_per_trial

    compiles: ClassVar[bool] = False
    """Its update can run compiled (`ppo.compile`)."""

    def check(self, task: TaskConfig) -> None:
        require(not self.ppo.compile or self.compiles, f"ppo.compile is not available for {self.name} (TrMRL only)")
        samples = self.steps_per_epoch(task)
        require(self.ppo.minibatch_size <= samples,
                f"ppo.minibatch_size ({self.ppo.minibatch_size}) is larger than an epoch's {samples} samples "
                f"(task.tasks_per_epoch x episodes x steps); use at most that")


@dataclass(frozen=True)
class RunSettings:
    """What every run has, whatever its algorithm."""

    preset: tyro.conf.Suppress[str] = "point-nav"
    """Name of the preset this config started from (recorded in the run directory)."""
    seed: int = 1
    """Root of every random stream (tasks, env resets, actions, minibatches, init)."""
    total_env_steps: int = 400_000
    """Meta-training budget in environment steps (rounded up to whole epochs)."""
    task: TaskConfig = field(default_factory=TaskConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run_dir: Path | None = None
    """Run directory; default runs/<preset>-s<seed>-<time>."""
    checkpoint_every: int = 10
    """Write a checkpoint every this many epochs (and always at the end)."""
    torch_threads: int = 0
    """Intra-op threads for torch (0: torch's default; `--nproc N` gives each process cores / N)."""
    progress: bool = True
    """Show progress: a bar on a terminal; otherwise (a batch job's log, a pipe) a plain line per
    epoch at most every 30 s, and every meta-test's result."""
    device: str = "auto"
    """Where the model, its update and policy inference run: auto (a GPU if there is one, one per
    process), cpu, cuda or cuda:K. Simulation runs on the CPU. TrMRL and RL^2 move to a GPU; the
    other algorithms run on the CPU."""
    dist_timeout: float = 300.0
    """Several processes: seconds one waits for the others (to join, at each exchange) before the
    run stops with an error."""
    track: bool = False
    """Also log to Weights & Biases (`pip install 'trmrl[track]'`; project `trmrl`, the run named
    after its directory; offline with WANDB_MODE=offline): the same keys as TensorBoard, the config
    and versions attached."""
    imports: tuple[str, ...] = ()
    """Modules imported first in every process that reads the run (training, `trmrl eval`,
    `--resume`, `--nproc`): where your own task distributions and algorithms register themselves."""


@dataclass(frozen=True, init=False)
class TrainConfig(RunSettings):
    """One meta-training run: the run's settings and one algorithm's config (`agent`), whose
    sections read as attributes of the run (`config.model` is `config.agent.model`) and are
    accepted as keywords where the agent is given or kept (`dataclasses.replace(config, model=...)`)."""

    agent: AlgorithmConfig = field(default=None, kw_only=True)  # type: ignore[assignment]

    def __init__(self, *args: Any, agent: AlgorithmConfig | None = None, **fields: Any) -> None:
        own = {f.name for f in dataclasses.fields(RunSettings)}
        changes = {name: fields.pop(name) for name in list(fields) if name not in own}
        require(agent is not None and type(agent) is not AlgorithmConfig,
                "a run config needs its algorithm's config: agent=... (e.g. trmrl.algos.make_config)")
        assert agent is not None
        unknown = sorted(set(changes) - set(sections(agent)))
        require(not unknown, f"{', '.join(unknown)}: not a run setting nor a section of the '{agent.name}' "
                             f"algorithm's config ({', '.join(sections(agent))})")
        settings = RunSettings(*args, **fields)
        for name in own:
            object.__setattr__(self, name, getattr(settings, name))
        object.__setattr__(self, "agent", dataclasses.replace(agent, **changes) if changes else agent)
        self.__post_init__()

    def __post_init__(self) -> None:
        require(self.total_env_steps >= 1, "total_env_steps must be >= 1")
        require(self.checkpoint_every >= 1, "checkpoint_every must be >= 1")
        require(self.torch_threads >= 0, "torch_threads must be >= 0")
        require(self.dist_timeout > 0, "dist_timeout must be > 0")
        self.agent.check(self.task)
        require(self.task.min_episodes_per_trial is None or self.agent.trials_of_random_length,
                f"task.min_episodes_per_trial: {self.agent.name} does not train on trials of a random length")

    def __getattr__(self, name: str) -> Any:
        # only reached for names that are not the run's own: the algorithm's sections
        agent = self.__dict__.get("agent")
        if agent is not None and name in sections(agent):
            return getattr(agent, name)
        raise AttributeError(f"'{name}' is neither a run setting nor a section of the "
                             f"'{getattr(agent, 'name', '?')}' algorithm's config")

    @property
    def algo(self) -> str:
        """The algorithm's registry name (`trmrl algos`)."""
        return self.agent.name

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with `changes`; a section takes a dict of its own changes, e.g.
        `config.replace(seed=2, model={"window": 1})`. Validated like any config. (Another
        algorithm: `trmrl.algos.with_algorithm`.)"""
        for name, value in list(changes.items()):
            if value == {}:  # no change, to a section this algorithm may not even have
                del changes[name]
            elif isinstance(value, dict):
                changes[name] = dataclasses.replace(getattr(self, name), **value)
        return dataclasses.replace(self, **changes)

    def task_options(self) -> dict[str, Any]:
        """What a task distribution may take from the run (`trmrl.tasks.TASK_OPTIONS`)."""
        t = self.task
        return {"seed": self.seed, "reward_function_version": t.reward_function_version,
                "remembered_action": t.remembered_action, "goal_radius": t.goal_radius, "goal_arc": t.goal_arc,
                "step_size": t.step_size}

    @property
    def steps_per_epoch(self) -> int:
        """Environment steps collected per epoch (the algorithm's arithmetic)."""
        return self.agent.steps_per_epoch(self.task)

    @property
    def initial_env_steps(self) -> int:
        """Steps collected once before the first epoch's own (PEARL's initial pool), 0 otherwise."""
        return self.agent.initial_env_steps(self.task)

    def env_steps_after(self, epochs: int) -> int:
        """Environment steps collected by the end of `epochs` epochs."""
        return (self.initial_env_steps if epochs else 0) + epochs * self.steps_per_epoch

    @property
    def n_epochs(self) -> int:
        return max(1, math.ceil((self.total_env_steps - self.initial_env_steps) / self.steps_per_epoch))


def sections(agent: AlgorithmConfig) -> tuple[str, ...]:
    """The section names of an algorithm's config (`--<section>.<field>` on the command line)."""
    return tuple(f.name for f in dataclasses.fields(agent))


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass; a run's algorithm sections sit beside its
    settings, after its `algo` (`config.json`: {"preset", "algo", "seed", ..., "model", "ppo"})."""
    out = dataclasses.asdict(config)
    if isinstance(config, TrainConfig):
        agent = out.pop("agent")
        out = {"preset": out.pop("preset"), "algo": config.algo, **out, **agent}

    def fix(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        if isinstance(value, tuple):
            return list(value)
        if isinstance(value, Path):
            return str(value)
        return value

    return fix(out)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a (nested) config dataclass from `to_dict` output; unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown config field(s) for {cls.__name__}: {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = from_dict(hint, value)
        elif typing.get_origin(hint) is tuple:
            kwargs[key] = tuple(value)
        elif value is not None and Path in _union_args(hint):
            kwargs[key] = Path(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


LEGACY_SECTIONS = ("model", "rl2", "maml", "pearl", "varibad")
"""Every algorithm's section sat in a run's config.json before a run held one algorithm's config."""


def run_config_from_dict(data: dict[str, Any], agent_class: type[AlgorithmConfig]) -> TrainConfig:
    """A run's config from `to_dict` output (its `algo` names `agent_class`); other algorithms'
    sections are errors, except in a config.json written when every run recorded all of them."""
    data = {k: v for k, v in data.items() if k != "algo"}
    mine = {f.name for f in dataclasses.fields(agent_class)}
    if all(name in data for name in LEGACY_SECTIONS):
        data = {k: v for k, v in data.items() if k in mine or k not in (*LEGACY_SECTIONS, "ppo")}
    agent = from_dict(agent_class, {k: data.pop(k) for k in list(data) if k in mine})
    settings = from_dict(RunSettings, data)
    return TrainConfig(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(RunSettings)}, agent=agent)


def _union_args(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)
