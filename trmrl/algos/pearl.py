"""PEARL (Rakelly et al., ICML 2019): off-policy meta-RL with a probabilistic context encoder.

A task is inferred, not remembered: an encoder maps each transition c_n = (s, a, r) of a task to
a Gaussian factor N(mu_n, sigma_n^2) over a task variable z, and the posterior is their product

    q(z | c_1..N) ∝ prod_n N(z; mu_n, sigma_n^2),   1/sigma^2 = sum_n 1/sigma_n^2,
                                                    mu = sigma^2 * sum_n mu_n / sigma_n^2,

which does not depend on the order of the transitions and narrows as they accumulate. A soft
actor-critic (twin Q, a V-function and its slowly tracking target, temperature fixed at 1 with
rewards scaled by `reward_scale`, as in the authors' code) acts on (s, z). The encoder is
trained by the critic's Bellman error through z (the reparameterised sample) plus
kl_weight * KL(q(z | c) || N(0, I)); the policy and V see z detached.

Data: a fixed pool of training tasks, each with an RL replay buffer and an encoder buffer. Per
iteration, a few tasks collect episodes with z from the prior (both buffers, the encoder buffer
cleared first so the encoder sees the current policy's data), then with z from the posterior
(the RL buffer only); then `gradient_steps` steps, each on a meta-batch of tasks with a context
batch from their encoder buffers and an RL batch from their replay buffers, all tasks in one
tensor. At meta-test a task shows nothing but itself: episodes with z from the prior, then the
posterior of that task's own transitions (`PEARLLearner`); the buffers are never read.

Shapes: P pool tasks, G meta-batch tasks, N transitions per task, S state, A action, Z latent,
C context features (S + A + 1, + S with next_obs_in_context), D buffer row (2 S + A + 2).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trmrl import checkpoint
from trmrl.config import AlgorithmConfig, TaskConfig, TrainConfig, require
from trmrl.errors import CheckpointError, ConfigError
from trmrl.optim import gradient_step
from trmrl.protocols import Starts, Step
from trmrl.sampler import Rollout, TrialSampler, rollout_metrics
from trmrl.seeding import Stream, numpy_rng, random_rows, task_streams, torch_generator
from trmrl.tasks import Task, TaskDistribution

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # the authors' clamp of the policy's log-std
MIN_VARIANCE = 1e-7  # floor of each factor's variance before the product


# ---------------------------------------------------------------- the posterior over z


@dataclass(frozen=True)
class PEARLConfig:
    """PEARL (`--algo pearl`, Rakelly et al. 2019): soft actor-critic on (state, z), z drawn from
    a posterior q(z | c) that a permutation-invariant encoder infers from a task's transitions c.
    Off-policy: a fixed pool of training tasks with a replay buffer each. Defaults: the authors'
    code (oyster, configs/default.py). Step counts are rounded up to whole episodes of
    task.max_episode_steps; task.tasks_per_epoch and task.episodes_per_trial are not used."""

    n_train_tasks: int = 100
    """Training tasks, drawn once per run; each keeps its own replay buffers."""
    latent_size: int = 5
    """Z: dimension of the task variable z."""
    net_size: int = 300
    """Width of the three hidden layers of the policy, both Q-functions and V."""
    encoder_hidden: tuple[int, ...] = (200, 200, 200)
    """Hidden sizes of the context encoder (ReLU MLP)."""
    initial_steps: int = 2000
    """Steps collected on every training task with z from the prior before the first update."""
    tasks_per_iteration: int = 5
    """Training tasks (drawn with replacement) that collect data each iteration."""
    prior_steps: int = 400
    """Per task and iteration: steps with z from the prior (to both buffers); the task's encoder
    buffer is cleared first, so the encoder trains on the current policy's data."""
    posterior_steps: int = 0
    """Per task and iteration: steps with z from the posterior (to both buffers)."""
    extra_posterior_steps: int = 400
    """Per task and iteration: steps with z from the posterior, to the RL buffer only (the policy
    must learn to act on posterior samples the encoder never trains on)."""
    gradient_steps: int = 2000
    """Gradient steps per iteration (each on every network)."""
    meta_batch: int = 16
    """Training tasks (with replacement) per gradient step."""
    batch_size: int = 256
    """RL transitions per task and gradient step."""
    context_batch: int = 64
    """Context transitions per task and gradient step (from the encoder buffer)."""
    discount: float = 0.99
    """Discount factor of the soft Bellman backup."""
    tau: float = 0.005
    """Soft update rate of the target V-function."""
    policy_lr: float = 3e-4
    qf_lr: float = 3e-4
    vf_lr: float = 3e-4
    context_lr: float = 3e-4
    reward_scale: float = 5.0
    """Rewards are multiplied by this in the Bellman target; with the temperature fixed at 1 it
    sets the weight of the policy's entropy (the setting PEARL is most sensitive to)."""
    kl_weight: float = 0.1
    """Weight of KL(q(z | c) || N(0, I)) (summed over the meta-batch) in the encoder's loss."""
    policy_mean_reg: float = 1e-3
    """Weight of the squared pre-tanh mean in the policy loss."""
    policy_std_reg: float = 1e-3
    """Weight of the squared log-std in the policy loss."""
    next_obs_in_context: bool = False
    """Add s' to each context transition (s, a, r) (for tasks that differ in their dynamics)."""
    replay_size: int = 1_000_000
    """Largest number of transitions a task's buffer keeps (the oldest go first)."""
    eval_exploration_episodes: int = 1
    """At meta-test: episodes acted with z from the prior before the posterior takes over (then
    inferred from everything the task has shown so far, after every episode)."""

    def __post_init__(self) -> None:
        for name in ("n_train_tasks", "latent_size", "net_size", "tasks_per_iteration", "gradient_steps",
                     "meta_batch", "batch_size", "context_batch", "replay_size"):
            require(getattr(self, name) >= 1, f"pearl.{name} must be >= 1")
        for name in ("initial_steps", "prior_steps", "posterior_steps", "extra_posterior_steps"):
            require(getattr(self, name) >= 0, f"pearl.{name} must be >= 0")
        require(self.initial_steps + self.prior_steps + self.posterior_steps > 0,
                 "pearl: initial_steps, prior_steps and posterior_steps are all 0: the encoder has no data")
        require(0.0 < self.discount <= 1.0, "pearl.discount must be in (0, 1]")
        require(0.0 < self.tau <= 1.0, "pearl.tau must be in (0, 1]")
        require(min(self.policy_lr, self.qf_lr, self.vf_lr, self.context_lr) > 0, "pearl learning rates must be > 0")
        require(self.reward_scale > 0, "pearl.reward_scale must be > 0")
        require(self.kl_weight >= 0, "pearl.kl_weight must be >= 0")
        require(self.eval_exploration_episodes >= 0, "pearl.eval_exploration_episodes must be >= 0")

    def episodes(self, steps: int, horizon: int) -> int:
        """`steps` in whole episodes of `horizon` steps (the authors collect whole paths until
        the count is reached)."""
        return math.ceil(steps / horizon)

    def iteration_episodes(self, horizon: int) -> int:
        """Episodes per task and iteration (prior, posterior and extra posterior)."""
        return sum(self.episodes(s, horizon) for s in (self.prior_steps, self.posterior_steps,
                                                      self.extra_posterior_steps))


@dataclass(frozen=True)
class PEARLAgent(AlgorithmConfig):
    """PEARL's part of a run's config. An epoch (iteration): pearl.tasks_per_iteration tasks x
    their episodes; before the first, the initial pool on every training task."""

    name: ClassVar[str] = "pearl"
    pearl: PEARLConfig = field(default_factory=PEARLConfig)

    def steps_per_epoch(self, task: TaskConfig) -> int:
        h = task.max_episode_steps
        return self.pearl.tasks_per_iteration * self.pearl.iteration_episodes(h) * h

    def initial_env_steps(self, task: TaskConfig) -> int:
        h = task.max_episode_steps
        return self.pearl.n_train_tasks * self.pearl.episodes(self.pearl.initial_steps, h) * h


def product_of_gaussians(means: Tensor, variances: Tensor) -> tuple[Tensor, Tensor]:
    """The normalised product of N Gaussian factors: means, variances (..., N, Z) -> (..., Z) each."""
    precision = variances.clamp(min=MIN_VARIANCE).reciprocal()
    variance = precision.sum(-2).reciprocal()
    return variance * (means * precision).sum(-2), variance


def kl_to_prior(mean: Tensor, variance: Tensor) -> Tensor:
    """KL(N(mean, diag(variance)) || N(0, I)), summed over z: (..., Z) -> (...)."""
    return 0.5 * (variance + mean.pow(2) - 1.0 - variance.log()).sum(-1)


def prior(n: int, latent: int) -> tuple[Tensor, Tensor]:
    """N(0, I) for n tasks: mean, variance (n, Z)."""
    return torch.zeros(n, latent), torch.ones(n, latent)


def soft_q_target(rewards: Tensor, terminated: Tensor, next_v: Tensor, reward_scale: float, discount: float) -> Tensor:
    """The soft Bellman target of Q: reward_scale * r + (1 - terminated) * discount * V'(s', z), (N,)
    each (the temperature is 1; the reward scale weighs reward against entropy)."""
    return reward_scale * rewards + (1.0 - terminated) * discount * next_v


def soft_v_target(q: Tensor, log_pi: Tensor) -> Tensor:
    """The target of V: min over the twin Q (2, N) of fresh actions minus their log-prob (N,)."""
    return q.min(0).values - log_pi


# ---------------------------------------------------------------- networks


class LinearEnsemble(nn.Module):
    """K independent linear layers applied at once (one batched matmul): (K, N, in) -> (K, N, out).
    Initialised as the authors' MLPs: hidden layers uniform in +-1/sqrt(fan_in) with bias 0.1,
    an output layer (weights and bias) uniform in +-`output_bound` (oyster: 3e-3; 1e-3 for the
    policy's mean and log-std)."""

    def __init__(self, k: int, n_in: int, n_out: int, output: bool, generator: torch.Generator,
                 output_bound: float = 3e-3) -> None:
        super().__init__()
        bound = output_bound if output else 1.0 / math.sqrt(n_in)
        self.weight = nn.Parameter((torch.rand(k, n_in, n_out, generator=generator) * 2 - 1) * bound)
        bias = (torch.rand(k, 1, n_out, generator=generator) * 2 - 1) * bound if output else torch.full((k, 1, n_out), 0.1)
        self.bias = nn.Parameter(bias)

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class MLPEnsemble(nn.Sequential):
    """K ReLU MLPs of the same sizes evaluated together: x (K, N, in) or (N, in) -> (K, N, out).
    The last layer is a linear output layer; with `output_layer=False` every layer is a hidden one
    (hidden init, ReLU after it): a trunk for heads of its own."""

    def __init__(self, k: int, sizes: Sequence[int], generator: torch.Generator, output_layer: bool = True) -> None:
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            last = output_layer and i == len(sizes) - 2
            layers.append(LinearEnsemble(k, sizes[i], sizes[i + 1], last, generator))
            if not last:
                layers.append(nn.ReLU())
        super().__init__(*layers)
        self.k = k

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        return super().forward(x.expand(self.k, *x.shape) if x.dim() == 2 else x)


class ContextEncoder(nn.Module):
    """Transitions c (..., N, C) -> posterior q(z | c): mean, variance (..., Z)."""

    def __init__(self, context_dim: int, hidden: Sequence[int], latent: int, generator: torch.Generator) -> None:
        super().__init__()
        self.latent = latent
        self.net = MLPEnsemble(1, [context_dim, *hidden, 2 * latent], generator)

    def factors(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """One Gaussian factor per transition: means, variances (..., N, Z)."""
        flat = context.reshape(-1, context.shape[-1])
        out = self.net(flat)[0].reshape(*context.shape[:-1], 2 * self.latent)
        return out[..., : self.latent], F.softplus(out[..., self.latent :])

    def forward(self, context: Tensor) -> tuple[Tensor, Tensor]:
        return product_of_gaussians(*self.factors(context))


class TanhGaussianPolicy(nn.Module):
    """pi(a | s, z) = tanh(u), u ~ N(mean(s, z), diag(exp(log_std(s, z)))^2): actions in (-1, 1)."""

    def __init__(self, input_dim: int, act_dim: int, width: int, generator: torch.Generator) -> None:
        super().__init__()
        # oyster's policy: three ReLU hidden layers, then `last_fc` and `last_fc_log_std` (here
        # one layer of both) uniform in +-1e-3
        self.trunk = MLPEnsemble(1, [input_dim, width, width, width], generator, output_layer=False)
        self.act_dim = act_dim
        self.heads = LinearEnsemble(1, width, 2 * act_dim, True, generator, output_bound=1e-3)  # mean and log-std

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (N, S + Z) -> pre-tanh mean, log_std (N, A)."""
        out = self.heads(self.trunk(x))[0]
        return out[:, : self.act_dim], out[:, self.act_dim :].clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, x: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Reparameterised actions (N, A) from standard-normal `noise` (N, A), their log-probs (N,)
        with the tanh change of variables, and the pre-tanh mean and log-std (N, A)."""
        mean, log_std = self(x)
        u = mean + log_std.exp() * noise
        action = torch.tanh(u)
        # log N(u; mean, std) from the noise itself ((u - mean) / std is the noise: no division)
        log_prob = (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prob = log_prob - torch.log(1 - action.pow(2) + 1e-6).sum(-1)
        return action, log_prob, mean, log_std


# ---------------------------------------------------------------- replay buffers


class TaskBuffers:
    """One FIFO buffer of transition rows (D,) per pool task, all in one tensor (P, capacity, D)
    so that a minibatch over G tasks is one gather. The capacity doubles as needed up to `limit`
    rows per task; past it the oldest rows are overwritten."""

    def __init__(self, n_tasks: int, dim: int, limit: int) -> None:
        self.limit = limit
        self.data = torch.zeros(n_tasks, min(1024, limit), dim)
        self.size = torch.zeros(n_tasks, dtype=torch.long)
        self.position = torch.zeros(n_tasks, dtype=torch.long)  # next row to write

    def add(self, task: int, rows: Tensor) -> None:
        """Append rows (N, D) to task `task`'s buffer."""
        rows = rows[-self.limit :]
        needed = min(int(self.size[task]) + len(rows), self.limit)
        if needed > self.data.shape[1]:
            capacity = min(self.limit, max(needed, 2 * self.data.shape[1]))
            grown = torch.zeros(self.data.shape[0], capacity, self.data.shape[2])
            grown[:, : self.data.shape[1]] = self.data
            self.data = grown
        index = (self.position[task] + torch.arange(len(rows))) % self.limit
        self.data[task, index] = rows
        self.position[task] = (self.position[task] + len(rows)) % self.limit
        self.size[task] = needed

    def clear(self, task: int) -> None:
        self.size[task] = 0
        self.position[task] = 0

    def sample(self, tasks: Tensor, n: int, generator: torch.Generator) -> Tensor:
        """n rows drawn uniformly with replacement from each of `tasks` (G,): (G, n, D)."""
        sizes = self.size[tasks]
        if (sizes == 0).any():
            raise ValueError("sampling from an empty task buffer")
        rows = (torch.rand(len(tasks), n, generator=generator) * sizes[:, None]).long()
        return self.data[tasks[:, None], rows]

    def state_dict(self) -> dict[str, Tensor]:
        return {"data": self.data[:, : int(self.size.max())].clone(), "size": self.size.clone(), "position": self.position.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        data = state["data"]
        if data.shape[0] != self.data.shape[0] or data.shape[2] != self.data.shape[2]:
            raise CheckpointError(f"replay buffers of shape {tuple(data.shape)} do not match this config")
        self.data = torch.zeros(data.shape[0], max(data.shape[1], self.data.shape[1]), data.shape[2])
        self.data[:, : data.shape[1]] = data
        self.size, self.position = state["size"].clone(), state["position"].clone()


def transitions(rollout: Rollout, state_dim: int) -> Tensor:
    """The rollout's transitions as buffer rows [s, a, r, s', terminated], env by env: (B, T, D)."""
    assert rollout.next_obs is not None
    s, s_next = rollout.obs[..., :state_dim], rollout.next_obs[..., :state_dim]
    rows = torch.cat([s, rollout.actions, rollout.rewards[..., None], s_next, rollout.terminated[..., None].float()], -1)
    return rows.transpose(0, 1)


@dataclass(frozen=True)
class Layout:
    """Where the parts of a buffer row lie."""

    state_dim: int
    act_dim: int
    next_obs_in_context: bool

    @property
    def row_dim(self) -> int:
        return 2 * self.state_dim + self.act_dim + 2

    @property
    def context_dim(self) -> int:
        return self.state_dim + self.act_dim + 1 + (self.state_dim if self.next_obs_in_context else 0)

    def context(self, rows: Tensor) -> Tensor:
        """Encoder inputs (..., C) of rows (..., D): (s, a, r), with s' if so configured."""
        return rows[..., : self.context_dim]

    def split(self, rows: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """s (..., S), a (..., A), r (...), s' (..., S), terminated (...) of rows (..., D)."""
        s, a = self.state_dim, self.act_dim
        return (rows[..., :s], rows[..., s : s + a], rows[..., s + a], rows[..., s + a + 1 : 2 * s + a + 1],
                rows[..., -1])


# ---------------------------------------------------------------- acting


@dataclass
class PEARLPolicy:
    """`Policy[Tensor]` whose state is each env's z (B, Z), drawn from that env's belief (mean,
    variance (B, Z): the prior or a posterior) at every episode start with the env's own random
    stream (posterior sampling: z is drawn even when actions are the mean). At meta-test it also
    holds the task's own transitions so far (N, D) and how many episodes it has seen."""

    net: TanhGaussianPolicy
    state_dim: int
    belief: tuple[Tensor, Tensor]
    context: Tensor | None = None
    episodes_seen: int = 0

    def initial_state(self, n: int) -> Tensor:
        return self.belief[0].expand(n, -1).clone()

    @torch.no_grad()
    def act(
        self, inputs: Tensor, state: Tensor, starts: Starts, generators: Sequence[torch.Generator] | None,
        deterministic: bool = False,
    ) -> tuple[Step, Tensor]:
        z = state
        if starts.episode.any():
            mean, variance = (x.expand(len(inputs), -1) for x in self.belief)
            rows = starts.episode.nonzero()[:, 0].tolist()
            z = z.clone()
            if generators is None:
                z[rows] = mean[rows]
            else:
                noise = random_rows([generators[b] for b in rows], (z.shape[1],))
                z[rows] = mean[rows] + variance[rows].sqrt() * noise
        x = torch.cat([inputs[:, : self.state_dim], z], -1)
        if deterministic:
            actions, log_probs = torch.tanh(self.net(x)[0]), torch.zeros(len(inputs))
        else:
            assert generators is not None, "sampled actions need one generator per env"
            actions, log_probs, _, _ = self.net.sample(x, random_rows(generators, (self.net.act_dim,)))
        return Step(actions, log_probs, torch.zeros(len(inputs))), z

    def value(self, inputs: Tensor, state: Tensor, starts: Starts) -> Tensor:
        return torch.zeros(len(inputs))  # SAC bootstraps from its own V, not from the sampler


@dataclass
class PEARLLearner:
    """`MetaLearner`: `exploration_episodes` episodes with z from the prior, then, after every
    episode, the posterior of everything this task has shown (its own transitions only)."""

    policy: TanhGaussianPolicy
    encoder: ContextEncoder
    layout: Layout
    exploration_episodes: int
    adapts_in_memory: bool = False

    def exploration_policy(self) -> PEARLPolicy:
        return PEARLPolicy(self.policy, self.layout.state_dim, prior(1, self.encoder.latent))

    def with_exploration_episodes(self, n: int) -> PEARLLearner:
        return dataclasses.replace(self, exploration_episodes=n)

    @torch.no_grad()
    def adapt(self, policy: PEARLPolicy, exploration: Rollout) -> PEARLPolicy:  # type: ignore[override]
        rows = transitions(exploration, self.layout.state_dim).reshape(-1, self.layout.row_dim)
        context = rows if policy.context is None else torch.cat([policy.context, rows])
        seen = policy.episodes_seen + 1
        belief = policy.belief
        if seen >= self.exploration_episodes:
            mean, variance = self.encoder(self.layout.context(context))
            belief = (mean[None], variance[None])
        return PEARLPolicy(self.policy, self.layout.state_dim, belief, context, seen)


# ---------------------------------------------------------------- the algorithm


def distinct_tasks(distribution: TaskDistribution, n: int, rng: np.random.Generator) -> list[Task]:
    """n distinct training tasks drawn from `distribution` (a distribution with fewer, such as
    cheetah-dir's two directions, is an error when n exceeds them)."""
    pool: dict[Task, None] = {}
    for _ in range(100):
        for task in distribution.sample(rng, n, "train"):
            pool.setdefault(task)
            if len(pool) == n:
                return list(pool)
    raise ConfigError(f"{distribution.name} gave only {len(pool)} distinct training tasks in 100 draws of "
                      f"{n}; set pearl.n_train_tasks to at most {len(pool)}")


class PEARL:
    """`Algorithm` and `TaskPool`: the networks, the pool's buffers, the sampler and the SAC step."""

    Config: ClassVar[type[PEARLAgent]] = PEARLAgent
    """This algorithm's part of a run's config."""
    data_parallel: ClassVar[bool] = False

    def __init__(self, config: TrainConfig, distribution: TaskDistribution) -> None:
        self.config = config
        p, h = config.pearl, config.task.max_episode_steps
        self.pool = distinct_tasks(distribution, p.n_train_tasks, numpy_rng(config.seed, Stream.POOL_TASKS))
        n_envs = max(p.tasks_per_iteration, min(p.n_train_tasks, 20))
        self.sampler = TrialSampler(distribution, n_envs, 1, h, config.task.vector_env)
        low, high = self.sampler.action_bounds
        if not (torch.all(low == -1) and torch.all(high == 1)):
            raise ConfigError(f"PEARL's tanh policy acts in [-1, 1]; {distribution.name}'s actions are bounded "
                              f"by [{low.tolist()}, {high.tolist()}]")
        act_dim = self.sampler.act_dim
        state_dim = self.sampler.obs_dim - act_dim - 2  # the trial env adds a_{t-1}, r_{t-1}, d_{t-1}
        self.layout = Layout(state_dim, act_dim, p.next_obs_in_context)
        g = torch_generator(config.seed, Stream.INIT)
        z, width = p.latent_size, p.net_size
        self.encoder = ContextEncoder(self.layout.context_dim, p.encoder_hidden, z, g)
        self.policy = TanhGaussianPolicy(state_dim + z, act_dim, width, g)
        self.qf = MLPEnsemble(2, [state_dim + act_dim + z, width, width, width, 1], g)  # twin Q
        self.vf = MLPEnsemble(1, [state_dim + z, width, width, width, 1], g)
        self.target_vf = copy.deepcopy(self.vf).requires_grad_(False)
        self.optimizers = {
            "policy": torch.optim.Adam(self.policy.parameters(), lr=p.policy_lr),
            # the twin Q and the encoder step on one loss (Adam is per parameter: the same as two)
            "critic": torch.optim.Adam([{"params": self.qf.parameters(), "lr": p.qf_lr},
                                        {"params": self.encoder.parameters(), "lr": p.context_lr}]),
            "vf": torch.optim.Adam(self.vf.parameters(), lr=p.vf_lr),
        }
        self.replay = TaskBuffers(len(self.pool), self.layout.row_dim, p.replay_size)
        self.encoder_replay = TaskBuffers(len(self.pool), self.layout.row_dim, p.replay_size)

    # -- the seams

    def epoch_tasks(self, epoch: int) -> list[Task]:
        """`tasks_per_iteration` pool tasks drawn with replacement, as the authors do (a task
        drawn twice collects both shares side by side, its encoder buffer cleared once)."""
        rng = numpy_rng(self.config.seed, Stream.TRAIN_TASKS, epoch)
        return [self.pool[i] for i in rng.integers(len(self.pool), size=self.config.pearl.tasks_per_iteration)]

    def meta_learner(self) -> PEARLLearner:
        return PEARLLearner(self.policy, self.encoder, self.layout, self.config.pearl.eval_exploration_episodes)

    def state_dict(self) -> dict[str, Any]:
        return {"model": {"policy": self.policy.state_dict(), "encoder": self.encoder.state_dict(),
                          "qf": self.qf.state_dict(), "vf": self.vf.state_dict(),
                          "target_vf": self.target_vf.state_dict()},
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "replay": self.replay.state_dict(), "encoder_replay": self.encoder_replay.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with checkpoint.restoring():
            nets = {"policy": self.policy, "encoder": self.encoder, "qf": self.qf, "vf": self.vf,
                    "target_vf": self.target_vf}
            for name, net in nets.items():
                net.load_state_dict(state["model"][name])
            for name, optimizer in self.optimizers.items():
                optimizer.load_state_dict(state["optimizers"][name])
            self.replay.load_state_dict(state["replay"])
            self.encoder_replay.load_state_dict(state["encoder_replay"])

    # -- data

    def _collect_round(self, tasks: Sequence[int], belief: tuple[Tensor, Tensor], streams: tuple[Any, Any],
                       to_encoder: bool) -> Rollout:
        """One episode on each of `tasks` (pool indices) acting on z from `belief` (B, Z) each,
        stored in the replay buffers."""
        rollout = self.sampler.collect(PEARLPolicy(self.policy, self.layout.state_dim, belief),
                                       [self.pool[i] for i in tasks], *streams, steps=self.config.task.max_episode_steps)
        for b, rows in zip(tasks, transitions(rollout, self.layout.state_dim)):
            self.replay.add(b, rows)
            if to_encoder:
                self.encoder_replay.add(b, rows)
        return rollout

    def collect_initial(self) -> list[Rollout]:
        """The authors' initial pool: `initial_steps` on every pool task with z from the prior."""
        p, seed = self.config.pearl, self.config.seed
        rounds = p.episodes(p.initial_steps, self.config.task.max_episode_steps)
        rollouts = []
        n = len(self.sampler.envs)
        for start in range(0, len(self.pool), n):
            tasks = list(range(start, min(start + n, len(self.pool))))
            for k in range(rounds):
                streams = task_streams(seed, Stream.POOL_ENVS, Stream.POOL_ACTIONS, k, tasks)
                rollouts.append(self._collect_round(tasks, prior(len(tasks), p.latent_size), streams, True))
        return rollouts

    def collect(self, tasks: Sequence[int], epoch: int, generator: torch.Generator) -> tuple[list[Rollout], list[Rollout]]:
        """The iteration's episodes on `tasks` (pool indices): (prior rounds, posterior rounds)."""
        p, seed, h = self.config.pearl, self.config.seed, self.config.task.max_episode_steps
        for b in set(tasks):
            self.encoder_replay.clear(b)
        plan = ([("prior", True)] * p.episodes(p.prior_steps, h) + [("posterior", True)] * p.episodes(p.posterior_steps, h)
                + [("posterior", False)] * p.episodes(p.extra_posterior_steps, h))
        out: dict[str, list[Rollout]] = {"prior": [], "posterior": []}
        index = torch.tensor(tasks)
        for k, (source, to_encoder) in enumerate(plan):
            if source == "prior":
                belief = prior(len(tasks), p.latent_size)
            else:  # the authors' update_post_train = 1: a fresh posterior before every episode
                with torch.no_grad():
                    context = self.encoder_replay.sample(index, p.context_batch, generator)
                    belief = self.encoder(self.layout.context(context))
            streams = task_streams(seed, Stream.TRAIN_ENVS, Stream.TRAIN_ACTIONS, epoch * len(plan) + k, range(len(tasks)))
            out[source].append(self._collect_round(tasks, belief, streams, to_encoder))
        return out["prior"], out["posterior"]

    # -- the update

    def gradient_step(self, generator: torch.Generator) -> dict[str, Tensor]:
        """One SAC step of every network on a meta-batch of G tasks, their G x batch RL
        transitions and G x context_batch context transitions as single tensors."""
        p, layout = self.config.pearl, self.layout
        ready = ((self.replay.size > 0) & (self.encoder_replay.size > 0)).nonzero()[:, 0]
        tasks = ready[torch.randint(len(ready), (p.meta_batch,), generator=generator)]
        context = layout.context(self.encoder_replay.sample(tasks, p.context_batch, generator))  # (G, Nc, C)
        s, a, r, s_next, done = (x.flatten(0, 1)  # (G * batch, ...)
                                 for x in layout.split(self.replay.sample(tasks, p.batch_size, generator)))

        mean, variance = self.encoder(context)  # (G, Z)
        z = mean + variance.sqrt() * torch.randn(mean.shape, generator=generator)  # reparameterised
        kl = kl_to_prior(mean, variance).sum()  # summed over the meta-batch, as the authors do
        z = z.repeat_interleave(p.batch_size, 0)  # (G * batch, Z)
        z_fixed = z.detach()

        # critic and encoder: soft Bellman error through z, plus the KL bottleneck
        q = self.qf(torch.cat([s, a, z], -1))[..., 0]  # (2, G * batch)
        with torch.no_grad():
            target_v = self.target_vf(torch.cat([s_next, z], -1))[0, :, 0]
            q_target = soft_q_target(r, done, target_v, p.reward_scale, p.discount)
        qf_loss = (q - q_target).pow(2).mean(1).sum()
        gradient_step(qf_loss + p.kl_weight * kl, self.optimizers["critic"], [], None, "Q and encoder")

        # V towards min Q - log pi of fresh actions; the policy towards min Q (z fixed for both)
        x = torch.cat([s, z_fixed], -1)
        noise = torch.randn(len(s), layout.act_dim, generator=generator)
        new_a, log_pi, pre_mean, log_std = self.policy.sample(x, noise)
        self.qf.requires_grad_(False)  # the policy's loss moves the policy only
        q_new = self.qf(torch.cat([s, new_a, z_fixed], -1))[..., 0]
        self.qf.requires_grad_(True)
        min_q = q_new.min(0).values
        v = self.vf(x)[0, :, 0]
        vf_loss = (v - soft_v_target(q_new, log_pi).detach()).pow(2).mean()
        gradient_step(vf_loss, self.optimizers["vf"], [], None, "V")
        with torch.no_grad():
            for target, source in zip(self.target_vf.parameters(), self.vf.parameters()):
                target.lerp_(source, p.tau)

        policy_loss = (log_pi - min_q).mean() + p.policy_mean_reg * pre_mean.pow(2).mean() \
            + p.policy_std_reg * log_std.pow(2).mean()
        gradient_step(policy_loss, self.optimizers["policy"], [], None, "policy")
        return {"qf_loss": qf_loss.detach(), "vf_loss": vf_loss.detach(), "policy_loss": policy_loss.detach(),
                "kl": kl.detach(), "z_variance": variance.detach().mean(), "log_pi": log_pi.detach().mean()}

    def train_iteration(self, tasks: Sequence[Task], epoch: int) -> dict[str, float]:
        p = self.config.pearl
        generator = torch_generator(self.config.seed, Stream.MINIBATCHES, epoch)
        t0 = time.perf_counter()
        initial = self.collect_initial() if epoch == 0 else []
        priors, posteriors = self.collect([self.pool.index(t) for t in tasks], epoch, generator)
        t1 = time.perf_counter()
        every = max(1, p.gradient_steps // 20)  # losses averaged over 20 of the steps
        totals: dict[str, float] = {}
        for step in range(p.gradient_steps):
            out = self.gradient_step(generator)
            if step % every == 0:
                for name, value in out.items():
                    totals[name] = totals.get(name, 0.0) + float(value) / math.ceil(p.gradient_steps / every)
        update = time.perf_counter() - t1
        z_variance, log_pi = totals.pop("z_variance"), totals.pop("log_pi")
        losses = {f"losses/{k}": v for k, v in totals.items()}
        rollouts = priors + posteriors
        steps = sum(r.num_steps for r in initial + rollouts)
        prior_metrics = rollout_metrics(Rollout.concat(priors)) if priors else {}
        posterior = Rollout.concat(posteriors) if posteriors else Rollout.concat(priors)
        return {f"charts/prior_{k.removeprefix('charts/')}": v for k, v in prior_metrics.items() if k != "charts/episodes"} \
            | rollout_metrics(posterior, self.sampler.action_bounds) | losses | {
                "charts/episodes": float(sum(int(r.episode_end.sum()) for r in initial + rollouts)),
                "charts/z_variance": z_variance, "charts/log_pi": log_pi,
                "charts/gradient_steps_per_s": p.gradient_steps / update,
                "time/sampling": t1 - t0, "time/update": update, "charts/sampling_sps": steps / (t1 - t0)}
