"""MAML-TRPO (Finn et al., ICML 2017): adaptation by gradient steps, beside TrMRL's in memory.

An MLP Gaussian policy pi_theta(a | s) reads the state alone (the trial env's a_{t-1}, r_{t-1},
d_{t-1} are dropped: MAML carries no memory, it adapts its parameters). Per epoch, for each of
G tasks:

    D_0 ~ pi_theta, R episodes
    theta_1 = theta - alpha * grad L_in(theta; D_0),   L_in = -mean(log pi(a | s) * A)
    D_1 ~ pi_theta_1, R episodes              (and so on for inner_steps steps)

A are advantages over a linear feature baseline fitted per task and batch (Duan et al. 2016, as
in the MAML and ProMP code). The meta-parameters theta then take one TRPO step (`trmrl.trpo`)
on the mean over tasks of the adapted policies' surrogate on their own data D_k, under a bound
on the mean KL between the adapted policies before and after the step; both are functions of
theta through the inner step(s), differentiated with `create_graph` (second order) unless
`first_order`.

Shapes: G tasks, R rollouts per task, B = G * R envs, task-major (env b runs task b // R),
H steps per episode, N = R * H samples per task, S state, A action, F baseline features.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from trmrl import checkpoint, ppo
from trmrl.config import AlgorithmConfig, TaskConfig, TrainConfig, require
from trmrl.linear_baseline import baseline_features, fit_linear_baseline, steps_since_start
from trmrl.nets.policy import gaussian_kl, gaussian_log_prob, mlp
from trmrl.protocols import Starts, Step
from trmrl.sampler import Rollout, TrialSampler, rollout_metrics
from trmrl.seeding import Stream, random_rows, task_streams, torch_generator
from trmrl.tasks import Task, TaskDistribution
from trmrl.trpo import Objective, trpo_step

Params = dict[str, Tensor]
"""The policy's parameters by name, each with a leading group axis: (G, ...) for G tasks, or
(1, ...) for one set shared by all envs (the meta-parameters)."""


@dataclass(frozen=True)
class MAMLConfig:
    """MAML-TRPO (`--algo maml`, Finn et al. 2017): an MLP Gaussian policy on the state alone,
    adapted to each task by policy-gradient steps on its own episodes; the meta-parameters take a
    TRPO step on the adapted policies' surrogate. Per epoch: task.tasks_per_epoch tasks x
    rollouts_per_task episodes of task.max_episode_steps, before each inner step and after the
    last one (task.episodes_per_trial is not used)."""

    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden sizes of the policy's tanh MLP."""
    init_std: float = 1.0
    """Initial standard deviation of the Gaussian policy (state-independent, learned, adapted)."""
    rollouts_per_task: int = 20
    """Episodes per task collected with the current parameters before each inner step and after
    the last one."""
    inner_lr: float = 0.1
    """Step size of the inner policy-gradient step(s)."""
    inner_steps: int = 1
    """Policy-gradient steps of adaptation (each on fresh episodes of the previous step's policy)."""
    first_order: bool = False
    """Treat the inner gradient as a constant in the meta-gradient (first-order MAML)."""
    gamma: float = 0.99
    """Discount factor of the returns and advantages."""
    gae_lambda: float = 1.0
    """GAE lambda over the linear feature baseline (1: returns minus baseline)."""
    normalize_advantages: bool = True
    """Standardise advantages per task (MAML's and ProMP's samplers do)."""
    baseline_reg: float = 1e-5
    """Ridge coefficient of the linear feature baseline (multiplied by 10 while the fit is not
    finite)."""
    max_kl: float = 0.01
    """TRPO trust region: mean KL between the adapted policies before and after the meta-step."""
    cg_iters: int = 10
    """Conjugate-gradient iterations for the step direction."""
    cg_damping: float = 1e-5
    """Damping added to the Fisher-vector product (F + damping * I)."""
    line_search_steps: int = 15
    """Backtracking steps; the step is rejected when none meets the KL bound and improves the
    surrogate."""
    line_search_ratio: float = 0.8
    """Step shrink factor per backtracking step."""
    eval_exploration_episodes: int = 1
    """At meta-test: episodes run with the current parameters before each adaptation step (one:
    the same experience TrMRL and RL^2 have before their second episode)."""
    eval_inner_steps: int | None = None
    """At meta-test: adaptation steps (None: maml.inner_steps)."""

    def __post_init__(self) -> None:
        require(self.rollouts_per_task >= 1, "maml.rollouts_per_task must be >= 1")
        require(self.inner_lr > 0, "maml.inner_lr must be > 0")
        require(self.inner_steps >= 1, "maml.inner_steps must be >= 1")
        require(0.0 < self.gamma <= 1.0, "maml.gamma must be in (0, 1]")
        require(0.0 <= self.gae_lambda <= 1.0, "maml.gae_lambda must be in [0, 1]")
        require(self.baseline_reg > 0, "maml.baseline_reg must be > 0")
        require(self.max_kl > 0, "maml.max_kl must be > 0")
        require(self.cg_iters >= 1, "maml.cg_iters must be >= 1")
        require(self.cg_damping >= 0, "maml.cg_damping must be >= 0")
        require(self.line_search_steps >= 1, "maml.line_search_steps must be >= 1")
        require(0.0 < self.line_search_ratio < 1.0, "maml.line_search_ratio must be in (0, 1)")
        require(self.init_std > 0, "maml.init_std must be > 0")
        require(self.eval_exploration_episodes >= 1, "maml.eval_exploration_episodes must be >= 1")
        require(self.eval_inner_steps is None or self.eval_inner_steps >= 0, "maml.eval_inner_steps must be >= 0")

    def episodes_per_task(self) -> int:
        """Episodes collected per task and epoch: before each inner step and after the last."""
        return self.rollouts_per_task * (self.inner_steps + 1)


@dataclass(frozen=True)
class MAMLAgent(AlgorithmConfig):
    """MAML-TRPO's part of a run's config. An epoch: task.tasks_per_epoch tasks x
    maml.episodes_per_task() episodes of task.max_episode_steps."""

    name: ClassVar[str] = "maml"
    maml: MAMLConfig = field(default_factory=MAMLConfig)

    def steps_per_epoch(self, task: TaskConfig) -> int:
        return task.tasks_per_epoch * self.maml.episodes_per_task() * task.max_episode_steps


class GaussianMLP(nn.Module):
    """pi(a | s) = N(mlp(s), diag(exp(log_std))^2), log_std state-independent."""

    def __init__(self, state_dim: int, act_dim: int, config: MAMLConfig, generator: torch.Generator) -> None:
        super().__init__()
        self.state_dim, self.act_dim = state_dim, act_dim
        with warnings.catch_warnings():  # a task may have no state (point-nav): a constant policy
            warnings.filterwarnings("ignore", "Initializing zero-element tensors")
            self.mean = mlp([state_dim, *config.hidden_sizes, act_dim], 1.0, generator)
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(config.init_std)))

    def forward(self, states: Tensor) -> tuple[Tensor, Tensor]:
        """states (..., S) -> mean (..., A), log_std (A,)."""
        return self.mean(states), self.log_std


def meta_params(net: GaussianMLP) -> Params:
    """The net's own parameters as one shared group (differentiable with respect to them)."""
    return {name: p.unsqueeze(0) for name, p in net.named_parameters()}


def group_forward(net: GaussianMLP, params: Params, states: Tensor) -> tuple[Tensor, Tensor]:
    """Each group's policy on its own states: states (G, N, S) -> mean (G, N, A), log_std (G, 1, A)."""
    groups = next(iter(params.values())).shape[0]
    if groups != states.shape[0]:
        params = {k: v.expand(states.shape[0], *v.shape[1:]) for k, v in params.items()}
    mean, log_std = vmap(lambda p, s: functional_call(net, p, (s,)))(params, states)
    return mean, log_std[:, None]


@dataclass
class TaskBatch:
    """One round of episodes, grouped by task."""

    states: Tensor  # (G, N, S)
    actions: Tensor  # (G, N, A)
    advantages: Tensor  # (G, N)
    log_probs: Tensor  # (G, N) at sampling time


def states_of(inputs: Tensor, state_dim: int) -> Tensor:
    """The env's state s_t from the trial env's [s_t, a_{t-1}, r_{t-1}, d_{t-1}] (..., O)."""
    return inputs[..., :state_dim]


def by_task(x: Tensor, groups: int) -> Tensor:
    """(T, B, ...) -> (G, N, ...): env b's steps go to task b // R, episode by episode."""
    moved = x.transpose(0, 1)  # (B, T, ...)
    return moved.reshape(groups, moved.shape[0] // groups * moved.shape[1], *moved.shape[2:])


def task_batch(rollout: Rollout, groups: int, state_dim: int, config: MAMLConfig) -> TaskBatch:
    """Advantages of one round: Monte-Carlo returns (a time limit ends an episode as in the MAML
    code), a linear baseline fitted per task, GAE over it, standardised per task."""
    states = states_of(rollout.obs, state_dim)
    cut = rollout.episode_end.clone()
    cut[-1] = True
    zeros = torch.zeros_like(rollout.rewards)
    returns = ppo.discounted_returns(rollout.rewards, zeros, zeros, cut, config.gamma)
    features = baseline_features(states, steps_since_start(rollout.episode_start))
    coefficients = fit_linear_baseline(by_task(features, groups), by_task(returns, groups), config.baseline_reg)
    baseline = (by_task(features, groups).double() @ coefficients[..., None])[..., 0].float()  # (G, N)
    baseline = baseline.reshape(rollout.rewards.shape[1], -1).transpose(0, 1)  # back to (T, B)
    next_baseline = torch.where(cut, 0.0, torch.cat([baseline[1:], zeros[:1]]))
    advantages = by_task(ppo.gae(rollout.rewards, baseline, next_baseline, cut, config.gamma, config.gae_lambda), groups)
    if config.normalize_advantages:
        advantages = (advantages - advantages.mean(1, keepdim=True)) / (advantages.std(1, keepdim=True) + 1e-8)
    return TaskBatch(by_task(states, groups), by_task(rollout.actions, groups), advantages,
                     by_task(rollout.log_probs, groups))


def inner_loss(net: GaussianMLP, params: Params, states: Tensor, actions: Tensor, advantages: Tensor) -> Tensor:
    """L_in of one task: -mean(log pi(a | s) * A); params of one group (no group axis)."""
    mean, log_std = functional_call(net, params, (states,))
    return -(gaussian_log_prob(mean, log_std, actions) * advantages).mean()


def adapt(net: GaussianMLP, params: Params, batch: TaskBatch, lr: float, create_graph: bool) -> Params:
    """One inner policy-gradient step per task: (1 or G, ...) params -> (G, ...) adapted params.
    With `create_graph` the result stays differentiable through the gradient (second order);
    without, the gradient is a constant (first order, or values only)."""
    groups = batch.states.shape[0]
    adapted: list[Params] = []
    with torch.enable_grad():
        for g in range(groups):
            own = {k: v[0 if v.shape[0] == 1 else g] for k, v in params.items()}
            if not any(v.requires_grad for v in own.values()):
                own = {k: v.detach().requires_grad_() for k, v in own.items()}
            loss = inner_loss(net, own, batch.states[g], batch.actions[g], batch.advantages[g])
            grads = torch.autograd.grad(loss, list(own.values()), create_graph=create_graph)
            adapted.append({k: v - lr * grad for (k, v), grad in zip(own.items(), grads)})
    return {k: torch.stack([a[k] for a in adapted]) for k in params}


def detached(params: Params) -> Params:
    return {k: v.detach() for k, v in params.items()}


def meta_objective(
    net: GaussianMLP, batches: Sequence[TaskBatch], old: tuple[Tensor, Tensor], inner_lr: float, first_order: bool,
) -> Objective:
    """objective(differentiable) -> (surrogate, mean KL) of the adapted policies on the last
    round of `batches`, as functions of the net's parameters through the inner steps on the
    earlier rounds. `old` = (mean (G, N, A), log_std (G, 1, A)) of the policies that collected
    the last round: the KL is KL(old || adapted), the surrogate's ratio is to their log-probs."""
    last = batches[-1]

    def evaluate(differentiable: bool) -> tuple[Tensor, Tensor]:
        with torch.set_grad_enabled(differentiable):
            params = meta_params(net)
            for batch in batches[:-1]:
                params = adapt(net, params, batch, inner_lr, create_graph=differentiable and not first_order)
            mean, log_std = group_forward(net, params, last.states)
            log_probs = gaussian_log_prob(mean, log_std, last.actions)
            surrogate = (torch.exp(log_probs - last.log_probs) * last.advantages).mean()
            kl = gaussian_kl(*old, mean, log_std).mean()
        return surrogate, kl

    return evaluate


@dataclass
class MAMLPolicy:
    """`Policy[None]`: acts with one parameter set per task group (B envs, task-major). While it
    `explores` it samples actions even when asked for mean actions: the inner step is a policy
    gradient, which sampled actions alone inform. At meta-test it also holds the episodes it
    has gathered towards its next adaptation step."""

    net: GaussianMLP
    params: Params
    explores: bool = True
    gathered: tuple[Rollout, ...] = ()
    steps_taken: int = 0

    def initial_state(self, n: int) -> None:
        return None

    @torch.no_grad()
    def act(
        self, inputs: Tensor, state: None, starts: Starts, generators: Sequence[torch.Generator] | None,
        deterministic: bool = False,
    ) -> tuple[Step, None]:
        groups = next(iter(self.params.values())).shape[0]
        states = states_of(inputs, self.net.state_dim).reshape(groups, len(inputs) // groups, self.net.state_dim)
        mean, log_std = group_forward(self.net, self.params, states)
        if deterministic and not self.explores:
            actions = mean
        else:
            assert generators is not None, "sampled actions need one generator per env"
            noise = random_rows(generators, (self.net.act_dim,)).reshape(mean.shape)
            actions = mean + log_std.exp() * noise
        log_probs = gaussian_log_prob(mean, log_std, actions).reshape(-1)
        return Step(actions.reshape(-1, self.net.act_dim), log_probs, torch.zeros(len(inputs))), None

    def value(self, inputs: Tensor, state: None, starts: Starts) -> Tensor:
        return torch.zeros(len(inputs))  # MAML's baseline is fitted on returns, not bootstrapped


@dataclass
class MAMLLearner:
    """`MetaLearner` at meta-test: `exploration_episodes` episodes with the current parameters,
    then an adaptation step on them, `inner_steps` times; the remaining episodes act with the
    adapted parameters as the protocol says."""

    net: GaussianMLP
    config: MAMLConfig
    adapts_in_memory: bool = False

    @property
    def inner_steps(self) -> int:
        c = self.config
        return c.inner_steps if c.eval_inner_steps is None else c.eval_inner_steps

    def exploration_policy(self) -> MAMLPolicy:
        return MAMLPolicy(self.net, detached(meta_params(self.net)), explores=self.inner_steps > 0)

    def with_exploration_episodes(self, n: int) -> MAMLLearner:
        return dataclasses.replace(self, config=dataclasses.replace(self.config, eval_exploration_episodes=n))

    def adapt(self, policy: MAMLPolicy, exploration: Rollout) -> MAMLPolicy:  # type: ignore[override]
        if policy.steps_taken >= self.inner_steps:
            return policy
        gathered = (*policy.gathered, exploration)
        if len(gathered) < self.config.eval_exploration_episodes:
            return dataclasses.replace(policy, gathered=gathered)
        batch = task_batch(Rollout.concat(gathered), 1, self.net.state_dim, self.config)
        params = detached(adapt(self.net, policy.params, batch, self.config.inner_lr, create_graph=False))
        steps = policy.steps_taken + 1
        return MAMLPolicy(self.net, params, explores=steps < self.inner_steps, steps_taken=steps)


class MAML:
    """`Algorithm`: the policy, its sampler (G * R envs of one episode each) and the TRPO step."""

    Config: ClassVar[type[MAMLAgent]] = MAMLAgent
    """This algorithm's part of a run's config."""
    data_parallel: ClassVar[bool] = False

    def __init__(self, config: TrainConfig, distribution: TaskDistribution) -> None:
        self.config = config
        t, m = config.task, config.maml
        self.sampler = TrialSampler(distribution, t.tasks_per_epoch * m.rollouts_per_task, 1, t.max_episode_steps,
                                    t.vector_env)
        act_dim = self.sampler.act_dim
        state_dim = self.sampler.obs_dim - act_dim - 2
        self.net = GaussianMLP(state_dim, act_dim, m, torch_generator(config.seed, Stream.INIT))

    def meta_learner(self) -> MAMLLearner:
        return MAMLLearner(self.net, self.config.maml)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.net.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with checkpoint.restoring():
            self.net.load_state_dict(state["model"])

    def collect(self, tasks: Sequence[Task], epoch: int) -> tuple[list[Rollout], list[TaskBatch], Params]:
        """Every round of the epoch (episodes of the meta-parameters, then of each adapted set),
        and the parameters that collected the last one."""
        m, seed = self.config.maml, self.config.seed
        groups, rollouts = len(tasks), m.rollouts_per_task
        env_tasks = [task for task in tasks for _ in range(rollouts)]
        params = detached(meta_params(self.net))
        rounds, batches = [], []
        for k in range(m.inner_steps + 1):
            streams = task_streams(seed, Stream.TRAIN_ENVS, Stream.TRAIN_ACTIONS, epoch * (m.inner_steps + 1) + k,
                                   range(len(env_tasks)))
            rollout = self.sampler.collect(MAMLPolicy(self.net, params), env_tasks, *streams,
                                           steps=self.config.task.max_episode_steps)
            rounds.append(rollout)
            batches.append(task_batch(rollout, groups, self.net.state_dim, m))
            if k < m.inner_steps:
                params = detached(adapt(self.net, params, batches[-1], m.inner_lr, create_graph=False))
        return rounds, batches, params

    def train_iteration(self, tasks: Sequence[Task], epoch: int) -> dict[str, float]:
        m = self.config.maml
        t0 = time.perf_counter()
        rounds, batches, adapted = self.collect(tasks, epoch)
        t1 = time.perf_counter()
        with torch.no_grad():
            old = group_forward(self.net, adapted, batches[-1].states)  # what collected the last round
        objective = meta_objective(self.net, batches, old, m.inner_lr, m.first_order)
        step = trpo_step(list(self.net.parameters()), objective, m.max_kl, m.cg_iters, m.cg_damping,
                         m.line_search_steps, m.line_search_ratio)
        update = time.perf_counter() - t1
        before = {f"charts/pre_adaptation_{k.removeprefix('charts/')}": v
                  for k, v in rollout_metrics(rounds[0]).items() if k != "charts/episodes"}
        steps = sum(r.num_steps for r in rounds)
        return before | rollout_metrics(rounds[-1], self.sampler.action_bounds) | {
            "losses/surrogate_before": step.surrogate_before, "losses/surrogate_after": step.surrogate_after,
            "losses/kl": step.kl, "charts/step_accepted": float(step.accepted),
            "charts/backtracks": float(step.backtracks), "losses/step_norm": step.step_norm,
            "charts/action_std": float(self.net.log_std.detach().exp().mean()),
            "charts/episodes": float(sum(int(r.episode_end.sum()) for r in rounds)),
            "time/sampling": t1 - t0, "time/update": update, "charts/sampling_sps": steps / (t1 - t0)}
