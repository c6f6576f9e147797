"""VariBAD (Zintgraf et al., ICLR 2020): a policy on a learned belief over the task.

An encoder reads the trial's inputs (s_t, a_{t-1}, r_{t-1}, d_{t-1}) with a GRU and gives at every
step a Gaussian belief q(z | tau_{:t}) = N(mean_t, diag(exp(logvar_t))); at a trial start the
GRU restarts from zero, and its head on the zero state is the prior q_0. It is trained as a VAE:
for a belief q_t drawn from a trial, a deterministic decoder predicts the trial's rewards, past
and future, from z ~ q_t, s, a and s', and

    ELBO_t = -sum_j (r_hat(z_t, s_j, a_j, s'_j) - r_j)^2 - kl_weight * KL(q_t || q_{t-1}),

q_{-1} = N(0, I), with ELBO terms and decoded rewards sub-sampled as the authors do. The policy
is PPO (the `ppo` section) on (s_t, mean_t, logvar_t), the belief detached: the RL loss does not
reach the encoder. The VAE trains from its own buffer of past trials, after every policy update.

Shapes: T steps, B envs (one trial each), N trajectories, S state, A action, Z latent, H GRU
hidden, X = S + A + 2 encoder input (the trial env's observation), K ELBO terms, D decoded rewards
per term.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from trmrl import checkpoint, distributed, ppo
from trmrl.algos.common import OnPolicyLoop
from trmrl.config import OnPolicyConfig, TrainConfig, require
from trmrl.nets.policy import gaussian_entropy, gaussian_log_prob, mlp
from trmrl.optim import gradient_step
from trmrl.protocols import InMemoryLearner, Starts, Step
from trmrl.sampler import Rollout, TrialSampler
from trmrl.seeding import Stream, random_rows, torch_generator
from trmrl.tasks import TaskDistribution


@dataclass(frozen=True)
class VariBADConfig:
    """VariBAD (`--algo varibad`, Zintgraf et al. 2020): a recurrent encoder infers a belief
    q(z | history) at every step of a trial, trained as a VAE whose reward decoder reconstructs
    the trial's past and future rewards from it; a PPO policy acts on (state, belief mean, belief
    log-variance), the belief detached. PPO's settings are the `ppo` section. Defaults: the
    authors' config/mujoco/args_cheetah_vel_varibad.py."""

    latent_size: int = 5
    """Z: dimension of the task variable."""
    gru_hidden: int = 128
    """Hidden units of the encoder's GRU (reset at a trial start only)."""
    state_embedding: int = 32
    """Encoder and decoder: ReLU embedding width of a state."""
    action_embedding: int = 16
    reward_embedding: int = 16
    reward_decoder: tuple[int, ...] = (64, 32)
    """Hidden sizes of the deterministic reward decoder r(z, s', s, a) (ReLU)."""
    decoder_prev_state: bool = True
    """The reward decoder also reads s (not only z and s')."""
    decoder_action: bool = True
    """The reward decoder also reads a."""
    decode_state: bool = False
    """Also decode s' from (z, s, a) (the authors' optional state decoder; off in their MuJoCo
    configs), with the reward decoder's hidden sizes."""
    state_loss_coeff: float = 1.0
    """Weight of the state reconstruction in the ELBO."""
    policy_state_embedding: int = 64
    """Policy and critic: ReLU embedding width of the state, before their MLPs."""
    policy_latent_embedding: int = 64
    """Policy and critic: ReLU embedding width of the belief (mean, logvar)."""
    policy_hidden: tuple[int, ...] = (128, 128)
    """Hidden sizes of the policy's and of the critic's tanh MLPs on the embeddings."""
    init_std: float = 1.0
    """Initial standard deviation of the Gaussian policy (state-independent, learned)."""
    vae_lr: float = 1e-3
    """Adam learning rate of the encoder and decoder."""
    kl_weight: float = 0.1
    """Weight of the KL terms KL(q_t || q_{t-1}) (q_{-1} = N(0, I)) in the ELBO."""
    vae_buffer: int = 10_000
    """Trajectories (trials) the VAE buffer keeps (the oldest go first)."""
    vae_batch: int = 10
    """Trajectories per VAE gradient step."""
    vae_updates: int = 1
    """VAE gradient steps per epoch (after the policy's update)."""
    subsample_elbos: int = 50
    """ELBO terms (beliefs) per trajectory and VAE step, drawn uniformly."""
    subsample_decodes: int = 50
    """Rewards decoded per ELBO term, drawn uniformly over the whole trajectory (past and future)."""
    vae_max_grad_norm: float | None = 1.0
    """Gradient-norm clip of the VAE step (None: none, the authors' point-robot config)."""
    clip_per_module: bool = False
    """Clip the encoder's and each decoder's gradient to vae_max_grad_norm apart, as the authors'
    vae.py (encoder_max_grad_norm, decoder_max_grad_norm; the MuJoCo presets); off: their
    gradients as one."""
    norm_adv_per_batch: bool = False
    """With ppo.norm_adv: normalise the advantages once over the epoch's samples before the
    minibatches, as the authors' ppo.py (the MuJoCo presets); off: per minibatch, as TrMRL's and
    RL^2's PPO."""
    normalize_inputs: bool = True
    """Normalise the policy's (state, belief) input by running mean and variance."""
    normalize_rewards: bool = True
    """Divide the policy's rewards by the running standard deviation of discounted returns (the
    VAE always sees raw rewards)."""

    def __post_init__(self) -> None:
        for name in ("latent_size", "gru_hidden", "vae_buffer", "vae_batch", "subsample_elbos", "subsample_decodes"):
            require(getattr(self, name) >= 1, f"varibad.{name} must be >= 1")
        require(self.vae_updates >= 0, "varibad.vae_updates must be >= 0")
        require(self.vae_lr > 0, "varibad.vae_lr must be > 0")
        require(self.kl_weight >= 0, "varibad.kl_weight must be >= 0")
        require(self.vae_max_grad_norm is None or self.vae_max_grad_norm > 0, "varibad.vae_max_grad_norm must be > 0")
        require(self.init_std > 0, "varibad.init_std must be > 0")


@dataclass(frozen=True)
class VariBADAgent(OnPolicyConfig):
    """VariBAD's part of a run's config: the belief's VAE and policy (`varibad`), PPO (`ppo`)."""

    name: ClassVar[str] = "varibad"
    varibad: VariBADConfig = field(default_factory=VariBADConfig)


@contextlib.contextmanager
def seeded(generator: torch.Generator) -> Iterator[None]:
    """Build modules with PyTorch's default initialisation, made reproducible: torch's global
    stream is seeded from `generator` inside and restored after. A task without a state
    (point-nav) gives empty embedding layers; their warning says nothing useful."""
    with torch.random.fork_rng(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        yield


# ---------------------------------------------------------------- the belief


def gaussian_kl(mean_q: Tensor, logvar_q: Tensor, mean_p: Tensor, logvar_p: Tensor) -> Tensor:
    """KL(N(mean_q, exp(logvar_q)) || N(mean_p, exp(logvar_p))), summed over z: (..., Z) -> (...)."""
    return 0.5 * (logvar_p - logvar_q - 1.0 + (logvar_q - logvar_p).exp()
                  + (mean_q - mean_p).pow(2) / logvar_p.exp()).sum(-1)


class BeliefEncoder(nn.Module):
    """(s_t, a_{t-1}, r_{t-1}, d_{t-1}) -> ReLU embeddings -> GRU cell -> belief (mean, logvar).
    The episode-boundary flag d is the trial env's; the authors' states mark a new episode by
    themselves, but a task whose state is hidden (point-nav) would otherwise not see it."""

    def __init__(self, state_dim: int, act_dim: int, config: VariBADConfig, generator: torch.Generator) -> None:
        super().__init__()
        self.state_dim, self.act_dim = state_dim, act_dim
        with seeded(generator):
            self.embed_state = nn.Sequential(nn.Linear(state_dim, config.state_embedding), nn.ReLU())
            self.embed_action = nn.Sequential(nn.Linear(act_dim, config.action_embedding), nn.ReLU())
            self.embed_reward = nn.Sequential(nn.Linear(1, config.reward_embedding), nn.ReLU())
            width = config.state_embedding + config.action_embedding + config.reward_embedding + 1
            self.gru = nn.GRUCell(width, config.gru_hidden)
            self.head = nn.Linear(config.gru_hidden, 2 * config.latent_size)
        self.hidden = config.gru_hidden

    def step(self, inputs: Tensor, hidden: Tensor, trial_start: Tensor) -> Tensor:
        """The hidden state after inputs (B, X) = [s, a_{t-1}, r_{t-1}, d_{t-1}]; zero where a trial
        starts (there the belief is the prior, whatever a and r say)."""
        s, a = inputs[:, : self.state_dim], inputs[:, self.state_dim : self.state_dim + self.act_dim]
        r, d = inputs[:, -2:-1], inputs[:, -1:]
        x = torch.cat([self.embed_state(s), self.embed_action(a), self.embed_reward(r), d], -1)
        return torch.where(trial_start[:, None], 0.0, self.gru(x, hidden))

    def belief(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, logvar) (..., Z) of hidden states (..., H)."""
        mean, logvar = self.head(hidden).chunk(2, -1)
        return mean, logvar

    def beliefs(self, inputs: Tensor, trial_start: Tensor) -> tuple[Tensor, Tensor]:
        """The belief at every step of sequences inputs (T, B, X), trial_start (T, B): (T, B, Z)
        each; the same as acting step by step (tested)."""
        hidden = inputs.new_zeros(inputs.shape[1], self.hidden)
        states = []
        for t in range(len(inputs)):
            hidden = self.step(inputs[t], hidden, trial_start[t])
            states.append(hidden)
        return self.belief(torch.stack(states))


class Decoder(nn.Module):
    """r_hat(z, s', [s], [a]) (`target` 'reward') or s'_hat(z, s, a) ('state'): ReLU embeddings of
    the states and the action, then a ReLU MLP."""

    def __init__(self, state_dim: int, act_dim: int, config: VariBADConfig, generator: torch.Generator,
                 target: str = "reward") -> None:
        super().__init__()
        self.target = target
        self.next_state = target == "reward"
        self.prev_state = config.decoder_prev_state or target == "state"
        self.action = config.decoder_action or target == "state"
        with seeded(generator):
            self.embed_state = nn.Sequential(nn.Linear(state_dim, config.state_embedding), nn.ReLU())
            self.embed_action = nn.Sequential(nn.Linear(act_dim, config.action_embedding), nn.ReLU())
            sizes = [config.latent_size + config.state_embedding * (self.next_state + self.prev_state)
                     + config.action_embedding * self.action, *config.reward_decoder,
                     1 if target == "reward" else state_dim]
            layers: list[nn.Module] = []
            for i in range(len(sizes) - 1):
                layers += [nn.Linear(sizes[i], sizes[i + 1]), nn.ReLU()]
            self.net = nn.Sequential(*layers[:-1])

    def forward(self, z: Tensor, s: Tensor, a: Tensor, s_next: Tensor) -> Tensor:
        """Predicted rewards (...) or next states (..., S) of z (..., Z), s, a, s'."""
        parts = [z] + [self.embed_state(s_next)] * self.next_state + [self.embed_state(s)] * self.prev_state \
            + [self.embed_action(a)] * self.action
        out = self.net(torch.cat(parts, -1))
        return out[..., 0] if self.target == "reward" else out


@dataclass
class Trajectories:
    """N trials as the VAE sees them: the encoder's inputs at T + 1 beliefs (the last after the
    trial's final transition) and the T transitions to decode. Time-major, like a Rollout."""

    inputs: Tensor  # (T + 1, N, X)
    trial_start: Tensor  # (T + 1, N) bool (a trial restarted after an early termination resets)
    states: Tensor  # (T, N, S)
    actions: Tensor  # (T, N, A)
    rewards: Tensor  # (T, N) raw rewards
    next_states: Tensor  # (T, N, S)

    @classmethod
    def of(cls, rollout: Rollout, state_dim: int) -> Trajectories:
        assert rollout.next_obs is not None
        # the final observation carries the last action and reward: the input of the last belief
        inputs = torch.cat([rollout.obs, rollout.next_obs[-1:]])
        starts = torch.cat([rollout.trial_start, torch.zeros_like(rollout.trial_start[:1])])
        return cls(inputs, starts, rollout.obs[..., :state_dim], rollout.actions, rollout.rewards,
                   rollout.next_obs[..., :state_dim])


def elbo_loss(encoder: BeliefEncoder, decoder: Decoder, batch: Trajectories, config: VariBADConfig,
              generator: torch.Generator, state_decoder: Decoder | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, reconstruction, KL) of the negative ELBO, summed over the K sampled ELBO terms and
    their D sampled decodes and averaged over the N trajectories (the authors' sums); the
    reconstruction is the reward's, plus state_loss_coeff times the next state's with a state
    decoder."""
    mean, logvar = encoder.beliefs(batch.inputs, batch.trial_start)  # (T + 1, N, Z)
    prior = torch.zeros_like(mean[:1])
    kl = gaussian_kl(mean, logvar, torch.cat([prior, mean[:-1]]), torch.cat([prior, logvar[:-1]]))  # (T + 1, N)
    steps, n = batch.rewards.shape
    k, d = config.subsample_elbos, config.subsample_decodes
    which = torch.randint(steps + 1, (k, n), generator=generator)
    column = torch.arange(n)
    z = mean[which, column] + (0.5 * logvar[which, column]).exp() * torch.randn(k, n, mean.shape[-1], generator=generator)
    decoded = torch.randint(steps, (k, d, n), generator=generator)
    inputs = (z[:, None].expand(k, d, n, -1), batch.states[decoded, column], batch.actions[decoded, column],
              batch.next_states[decoded, column])
    reconstruction = (decoder(*inputs) - batch.rewards[decoded, column]).pow(2).sum((0, 1)).mean()
    if state_decoder is not None:
        error = (state_decoder(*inputs) - batch.next_states[decoded, column]).pow(2).sum(-1)
        reconstruction = reconstruction + config.state_loss_coeff * error.sum((0, 1)).mean()
    kl_term = kl[which, column].sum(0).mean()
    return reconstruction + config.kl_weight * kl_term, reconstruction, kl_term


class TrajectoryBuffer:
    """The last `size` trials, FIFO, for the VAE."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.data: Trajectories | None = None
        self.count = 0  # trials added so far

    def add(self, batch: Trajectories) -> None:
        fields = [f.name for f in dataclasses.fields(Trajectories)]
        n = min(batch.rewards.shape[1], self.size)
        parts = {name: getattr(batch, name)[:, -n:] for name in fields}  # more than it keeps: the last ones
        if self.data is None:
            self.data = Trajectories(**{k: v.new_zeros(v.shape[0], self.size, *v.shape[2:]) for k, v in parts.items()})
        slots = (self.count + torch.arange(n)) % self.size
        for name, value in parts.items():
            getattr(self.data, name)[:, slots] = value
        self.count += n

    def sample(self, n: int, generator: torch.Generator) -> Trajectories:
        assert self.data is not None, "sampling from an empty trajectory buffer"
        index = torch.randint(min(self.count, self.size), (n,), generator=generator)
        return Trajectories(**{f.name: getattr(self.data, f.name)[:, index] for f in dataclasses.fields(Trajectories)})

    def state_dict(self) -> dict[str, Any]:
        kept = min(self.count, self.size)
        data = None if self.data is None else {f.name: getattr(self.data, f.name)[:, :kept].clone()
                                               for f in dataclasses.fields(Trajectories)}
        return {"count": self.count, "data": data}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count, self.data = state["count"], None
        if state["data"] is not None:
            kept = next(iter(state["data"].values())).shape[1]
            self.data = Trajectories(**{k: v.new_zeros(v.shape[0], self.size, *v.shape[2:]) for k, v in state["data"].items()})
            for k, v in state["data"].items():
                getattr(self.data, k)[:, :kept] = v


# ---------------------------------------------------------------- normalisers


class RunningMeanStd(nn.Module):
    """Running mean and variance of a stream of vectors (Chan et al.'s parallel update), saved in
    the checkpoint as buffers."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(dim, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))

    def update(self, x: Tensor) -> None:
        """Fold in rows x (N, dim)."""
        x = x.double().reshape(-1, self.mean.shape[0])
        n, mean, var = len(x), x.mean(0), x.var(0, unbiased=False)
        total = self.count + n
        delta = mean - self.mean
        self.var.copy_((self.var * self.count + var * n + delta.pow(2) * self.count * n / total) / total)
        self.mean.add_(delta * n / total)
        self.count.copy_(total)

    def normalize(self, x: Tensor, clip: float = 10.0) -> Tensor:
        return ((x - self.mean.float()) / (self.var.float() + 1e-8).sqrt()).clamp(-clip, clip)


def discounted_running_returns(rewards: Tensor, trial_start: Tensor, gamma: float) -> Tensor:
    """ret_t = gamma * ret_{t-1} + r_t, restarting at every trial start: (T, B) -> (T, B). The
    reward normaliser divides by their running standard deviation (as gym's VecNormalize)."""
    out, running = torch.zeros_like(rewards), torch.zeros_like(rewards[0])
    for t in range(len(rewards)):
        running = torch.where(trial_start[t], 0.0, gamma * running) + rewards[t]
        out[t] = running
    return out


# ---------------------------------------------------------------- the policy


class Head(nn.Module):
    """ReLU embeddings of the state and of the belief, then a tanh MLP: (..., S + 2 Z) -> (..., out)."""

    def __init__(self, state_dim: int, out: int, gain: float, config: VariBADConfig, generator: torch.Generator) -> None:
        super().__init__()
        self.state_dim = state_dim
        with seeded(generator):
            self.embed_state = nn.Sequential(nn.Linear(state_dim, config.policy_state_embedding), nn.ReLU())
            self.embed_belief = nn.Sequential(nn.Linear(2 * config.latent_size, config.policy_latent_embedding),
                                              nn.ReLU())
        width = config.policy_state_embedding + config.policy_latent_embedding
        self.mlp = mlp([width, *config.policy_hidden, out], gain, generator)

    def forward(self, x: Tensor) -> Tensor:
        s, belief = x[..., : self.state_dim], x[..., self.state_dim :]
        return self.mlp(torch.cat([self.embed_state(s), self.embed_belief(belief)], -1))


class BeliefActorCritic(nn.Module):
    """Gaussian policy and value on the normalised (s, belief mean, belief logvar), each with its
    own embeddings (the authors share them; here the policy and value phases step apart)."""

    def __init__(self, state_dim: int, act_dim: int, config: VariBADConfig, generator: torch.Generator) -> None:
        super().__init__()
        self.act_dim = act_dim
        self.actor = Head(state_dim, act_dim, 0.01, config, generator)
        self.critic = Head(state_dim, 1, 1.0, config, generator)
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(config.init_std)))
        self.value_log_std = nn.Parameter(torch.zeros(()))  # used by the 'nll' value loss only

    def policy_parameters(self) -> Iterable[nn.Parameter]:
        return [*self.actor.parameters(), self.log_std]

    def value_parameters(self) -> Iterable[nn.Parameter]:
        return [*self.critic.parameters(), self.value_log_std]


@dataclass
class VariBADPolicy:
    """`Policy[Tensor]`: the state is the encoder's GRU hidden state (B, H), restarted at a trial
    start, so the belief spans the episodes of a trial."""

    encoder: BeliefEncoder
    model: BeliefActorCritic
    inputs_rms: RunningMeanStd
    normalize: bool

    @property
    def device(self) -> torch.device:
        return self.model.log_std.device

    def initial_state(self, n: int) -> Tensor:
        return torch.zeros(n, self.encoder.hidden, device=self.device)

    def policy_inputs(self, raw: Tensor) -> Tensor:
        """The policy's input from (s, belief mean, belief logvar) (..., S + 2 Z): normalised if
        so configured."""
        return self.inputs_rms.normalize(raw) if self.normalize else raw

    def _read(self, inputs: Tensor, hidden: Tensor, starts: Starts) -> tuple[Tensor, Tensor]:
        e = self.encoder
        hidden = e.step(inputs, hidden, starts.trial)
        return self.policy_inputs(torch.cat([inputs[:, : e.state_dim], *e.belief(hidden)], -1)), hidden

    @torch.no_grad()
    def act(
        self, inputs: Tensor, state: Tensor, starts: Starts, generators: Sequence[torch.Generator] | None,
        deterministic: bool = False,
    ) -> tuple[Step, Tensor]:
        x, hidden = self._read(inputs, state, starts)
        mean = self.model.actor(x)
        if deterministic:
            actions = mean
        else:
            assert generators is not None, "sampled actions need one generator per env"
            actions = mean + self.model.log_std.exp() * random_rows(generators, (self.model.act_dim,), device=self.device)
        log_probs = gaussian_log_prob(mean, self.model.log_std, actions)
        return Step(actions, log_probs, self.model.critic(x)[:, 0]), hidden

    @torch.no_grad()
    def value(self, inputs: Tensor, state: Tensor, starts: Starts) -> Tensor:
        return self.model.critic(self._read(inputs, state, starts)[0])[:, 0]


# ---------------------------------------------------------------- the algorithm


class VariBAD(OnPolicyLoop):
    """`Algorithm`: the encoder, decoder, policy, their optimisers, normalisers and VAE buffer.

    Over several processes (`trmrl.distributed`) the collection splits by task and PPO's
    minibatches by row; every process then holds the whole rollout, so the normalisers, the VAE
    buffer and the VAE's steps (drawn from the same stream) stay equal without communication."""

    Config: ClassVar[type[VariBADAgent]] = VariBADAgent
    """This algorithm's part of a run's config."""

    data_parallel: ClassVar[bool] = True

    def __init__(self, config: TrainConfig, distribution: TaskDistribution) -> None:
        self.config = config
        t, v = config.task, config.varibad
        self.sampler = TrialSampler.for_training(distribution, t, distributed.share_size(t.tasks_per_epoch))
        act_dim = self.sampler.act_dim
        self.state_dim = state_dim = self.sampler.obs_dim - act_dim - 2
        g = torch_generator(config.seed, Stream.INIT)
        self.encoder = BeliefEncoder(state_dim, act_dim, v, g)
        self.decoder = Decoder(state_dim, act_dim, v, g)
        self.state_decoder = Decoder(state_dim, act_dim, v, g, "state") if v.decode_state else None
        self.model = BeliefActorCritic(state_dim, act_dim, v, g)
        self.inputs_rms = RunningMeanStd(state_dim + 2 * v.latent_size)
        self.returns_rms = RunningMeanStd(1)
        self.policy = VariBADPolicy(self.encoder, self.model, self.inputs_rms, v.normalize_inputs)
        p = config.ppo
        self.optimizers = {
            "policy": torch.optim.Adam(self.model.policy_parameters(), lr=p.policy_lr, eps=1e-8),
            "value": torch.optim.Adam(self.model.value_parameters(), lr=p.value_lr, eps=1e-8),
            "vae": torch.optim.Adam(self.vae_parameters(), lr=v.vae_lr),
        }
        self.buffer = TrajectoryBuffer(v.vae_buffer)
        samples = t.tasks_per_epoch * t.steps_per_trial
        self.schedules = ppo.lr_schedules(p, samples)
        self.steps_per_epoch = p.update_epochs * math.ceil(samples / p.minibatch_size)

    def meta_learner(self) -> InMemoryLearner:
        return InMemoryLearner(self.policy)

    def vae_modules(self) -> list[nn.Module]:
        """The encoder and the decoders: one optimiser, each module's gradient clipped apart."""
        return [self.encoder, self.decoder] + ([self.state_decoder] if self.state_decoder is not None else [])

    def vae_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.vae_modules() for p in m.parameters()]

    def _modules(self) -> dict[str, nn.Module]:
        modules = {"encoder": self.encoder, "decoder": self.decoder, "model": self.model,
                   "inputs_rms": self.inputs_rms, "returns_rms": self.returns_rms}
        return modules | ({"state_decoder": self.state_decoder} if self.state_decoder is not None else {})

    def state_dict(self) -> dict[str, Any]:
        return {"model": {k: m.state_dict() for k, m in self._modules().items()},
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "vae_buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with checkpoint.restoring():
            for name, module in self._modules().items():
                module.load_state_dict(state["model"][name])
            for name, optimizer in self.optimizers.items():
                optimizer.load_state_dict(state["optimizers"][name])
            self.buffer.load_state_dict(state["vae_buffer"])

    def raw_inputs(self, rollout: Rollout) -> Tensor:
        """(s, belief mean, belief logvar) at every step of the rollout, recomputed in one pass
        over the sequence (what acting computed step by step, tested): (T, B, S + 2 Z)."""
        e = self.encoder
        with torch.no_grad():
            mean, logvar = e.beliefs(rollout.obs, rollout.trial_start)
            return torch.cat([rollout.obs[..., : e.state_dim], mean, logvar], -1)

    def normalized_rewards(self, rollout: Rollout) -> Tensor:
        """The policy's rewards: divided by the running std of discounted returns (updated with
        this rollout first), clipped to [-10, 10]."""
        if not self.config.varibad.normalize_rewards:
            return rollout.rewards
        self.returns_rms.update(discounted_running_returns(rollout.rewards, rollout.trial_start,
                                                           self.config.ppo.gamma).reshape(-1, 1))
        return (rollout.rewards / (self.returns_rms.var.float() + 1e-8).sqrt()).clamp(-10.0, 10.0)

    def collecting_policy(self) -> VariBADPolicy:
        return self.policy

    def update(self, rollout: Rollout, epoch: int, generator: torch.Generator) -> tuple[dict[str, float], int]:
        p, v = self.config.ppo, self.config.varibad
        rollout = rollout.to(self.policy.device)
        raw = self.raw_inputs(rollout).flatten(0, 1)
        x = self.policy.policy_inputs(raw)
        scaled = dataclasses.replace(rollout, rewards=self.normalized_rewards(rollout))
        advantages, returns = (a.flatten() for a in ppo.advantages_and_returns(scaled, p))
        if p.norm_adv and v.norm_adv_per_batch:  # the authors' ppo.py: once over the batch, before the minibatches
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-5)
            p = dataclasses.replace(p, norm_adv=False)
        actions, old_log_probs = rollout.actions.flatten(0, 1), rollout.log_probs.flatten()
        model = self.model

        def policy_terms(index: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
            log_probs = gaussian_log_prob(model.actor(x[index]), model.log_std, actions[index])
            return log_probs, old_log_probs[index], advantages[index], gaussian_entropy(model.log_std)

        def value_terms(index: Tensor) -> tuple[Tensor, Tensor]:
            return model.critic(x[index])[:, 0], returns[index]

        metrics = ppo.ppo_update(
            len(x), p.minibatch_size,
            (ppo.Phase(self.optimizers["policy"], list(model.policy_parameters()), self.schedules[0]), policy_terms),
            (ppo.Phase(self.optimizers["value"], list(model.value_parameters()), self.schedules[1]), value_terms),
            model.value_log_std, p, generator, epoch * self.steps_per_epoch, lambda index: advantages[index])
        metrics["losses/explained_variance"] = ppo.explained_variance(scaled.values.flatten(), returns)
        metrics["charts/action_std"] = float(model.log_std.detach().exp().mean())
        metrics["losses/entropy"] = float(gaussian_entropy(model.log_std.detach()))
        # after the update, which ran on the statistics the samples were drawn with (ratio 1 at its start)
        self.inputs_rms.update(raw)

        self.buffer.add(Trajectories.of(rollout, self.state_dim))
        vae = {"losses/vae": 0.0, "losses/reward_reconstruction": 0.0, "losses/vae_kl": 0.0}
        for _ in range(v.vae_updates):
            loss, reconstruction, kl = elbo_loss(self.encoder, self.decoder, self.buffer.sample(v.vae_batch, generator),
                                                 v, generator, self.state_decoder)
            gradient_step(loss, self.optimizers["vae"], self.vae_parameters(), v.vae_max_grad_norm, "VAE",
                          clip_groups=[list(m.parameters()) for m in self.vae_modules()] if v.clip_per_module else None)
            for key, value in zip(vae, (loss, reconstruction, kl)):
                vae[key] += float(value.detach()) / v.vae_updates
        return metrics | vae, len(x)
