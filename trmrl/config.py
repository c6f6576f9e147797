"""Typed, frozen configuration. Every field's docstring is its `--help` text.

Presets (`trmrl.presets`) are values of `TrainConfig`; the command line overrides any field,
e.g. `trmrl train cheetah-vel --seed 2 --model.window 1 --total-env-steps 200000`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tyro

from trmrl.errors import ConfigError

MemoryScope = Literal["episode", "trial"]
TFixup = Literal["code", "paper", "off"]
ValueLoss = Literal["nll", "mse"]


def _require(condition: bool, message: str) -> None:
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
    max_episode_steps: int = 20
    """H: time limit of one episode (a truncation, not a termination)."""
    tasks_per_epoch: int = 32
    """B: tasks sampled per epoch, one trial each, stepped as one batch."""
    vector_env: Literal["sync", "async"] = "sync"
    """How the B trial envs are stepped: one after the other in this process ('sync'), or each in
    its own subprocess in parallel ('async', gymnasium's AsyncVectorEnv; the same data). On 2
    cores async was slower even for MetaWorld (0.57-0.86x, `benchmarks/metaworld_speed.py`); it
    is meant for machines with a core per few envs."""
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
        _require(self.episodes_per_trial >= 1, "task.episodes_per_trial must be >= 1")
        _require(self.max_episode_steps >= 1, "task.max_episode_steps must be >= 1")
        _require(self.tasks_per_epoch >= 1, "task.tasks_per_epoch must be >= 1")
        _require(self.goal_radius > 0, f"task.goal_radius must be > 0 (got {self.goal_radius})")
        _require(0 < self.goal_arc <= 360, f"task.goal_arc must be in (0, 360] degrees (got {self.goal_arc})")
        _require(self.step_size > 0, f"task.step_size must be > 0 (got {self.step_size})")

    @property
    def steps_per_trial(self) -> int:
        """T = E * H: the longest a trial can be (episodes may end early on termination)."""
        return self.episodes_per_trial * self.max_episode_steps


@dataclass(frozen=True)
class ModelConfig:
    """The TrMRL agent: working memory -> causal transformer (no LayerNorm) -> Gaussian head."""

    d_model: int = 32
    """D: width of a working memory and of the transformer."""
    n_heads: int = 4
    """Attention heads; must divide d_model."""
    d_ff: int = 128
    """Hidden width of each layer's feed-forward block."""
    n_layers: int = 2
    """L: transformer layers (also the L of T-Fixup)."""
    window: int = 5
    """W: number of most recent working memories the transformer attends over."""
    memory_scope: MemoryScope = "episode"
    """Where the window is cleared: every episode start ('episode', the original code) or only
    at a trial start ('trial', the window then spans episode boundaries)."""
    tfixup: TFixup = "code"
    """T-Fixup variant: 'code' scales Q, K, V, out-proj and FFN (original code), 'paper' scales
    only V, out-proj and FFN (Huang et al. 2020), 'off' keeps plain xavier init."""
    head_hidden: tuple[int, ...] = (64, 64)
    """Hidden sizes of the policy's tanh MLP head."""
    value_hidden: tuple[int, ...] = (64, 64)
    """Hidden sizes of the value function's tanh MLP."""
    init_std: float = 0.5
    """Initial standard deviation of the Gaussian policy (state-independent, learned)."""
    output_weights_scale: float = 1.0
    """Xavier gain of the policy head's output layer."""
    shared_log_std: bool = False
    """One learned log-std shared by every action dimension (the original code until 2021-05-11,
    when it became one per dimension, the default here)."""
    share_network: bool = False
    """True: the value head reads the policy's latest memory (gradients reach the transformer).
    False: a separate value MLP reads the single augmented observation."""
    newest_only_last_layer: bool = True
    """Compute the last layer at the newest position only (the only output read); same result,
    fewer FLOPs. False runs every position through every layer, as the original code."""

    def __post_init__(self) -> None:
        for name in ("d_model", "n_heads", "d_ff", "n_layers"):
            _require(getattr(self, name) >= 1, f"model.{name} must be >= 1")
        _require(
            self.d_model % self.n_heads == 0,
            f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads})",
        )
        _require(self.window >= 1, f"model.window must be >= 1 (got {self.window})")
        _require(self.init_std > 0, "model.init_std must be > 0")


@dataclass(frozen=True)
class RL2Config:
    """The RL^2 agent (`--algo rl2`): a recurrent policy over the same trial inputs, its hidden
    state carried across the episodes of a trial and reset at a trial start, and a separate
    recurrent critic (the value of a trial state depends on the hidden task, which only the
    history reveals). Trained with PPO and truncated backpropagation through time."""

    cell: Literal["gru", "lstm"] = "gru"
    """Recurrent core (torch.nn.GRU or torch.nn.LSTM)."""
    hidden_size: int = 64
    """H: hidden units of the policy's and of the critic's core."""
    encoder_hidden: tuple[int, ...] = ()
    """Hidden sizes of a tanh MLP applied to each input before the core (empty: none)."""
    bptt_chunk: int = 10
    """Truncated BPTT: the update replays stored sequences in chunks of this many steps (a chunk
    also ends where a trial ends), each from the hidden state stored at its first step."""
    init_std: float = 0.5
    """Initial standard deviation of the Gaussian policy (state-independent, learned)."""
    output_weights_scale: float = 1.0
    """Xavier gain of the policy head."""
    reset_every_step: bool = False
    """Ablation: reset the hidden state at every step, leaving the agent no memory (RL^2's
    counterpart of TrMRL's window of 1). Needs rl2.bptt_chunk 1."""

    def __post_init__(self) -> None:
        _require(self.hidden_size >= 1, "rl2.hidden_size must be >= 1")
        _require(not self.reset_every_step or self.bptt_chunk == 1,
                 "rl2.reset_every_step needs rl2.bptt_chunk 1 (every chunk starts from a zero state)")
        _require(self.bptt_chunk >= 1, "rl2.bptt_chunk must be >= 1")
        _require(self.init_std > 0, "rl2.init_std must be > 0")


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
        _require(self.rollouts_per_task >= 1, "maml.rollouts_per_task must be >= 1")
        _require(self.inner_lr > 0, "maml.inner_lr must be > 0")
        _require(self.inner_steps >= 1, "maml.inner_steps must be >= 1")
        _require(0.0 < self.gamma <= 1.0, "maml.gamma must be in (0, 1]")
        _require(0.0 <= self.gae_lambda <= 1.0, "maml.gae_lambda must be in [0, 1]")
        _require(self.baseline_reg > 0, "maml.baseline_reg must be > 0")
        _require(self.max_kl > 0, "maml.max_kl must be > 0")
        _require(self.cg_iters >= 1, "maml.cg_iters must be >= 1")
        _require(self.cg_damping >= 0, "maml.cg_damping must be >= 0")
        _require(self.line_search_steps >= 1, "maml.line_search_steps must be >= 1")
        _require(0.0 < self.line_search_ratio < 1.0, "maml.line_search_ratio must be in (0, 1)")
        _require(self.init_std > 0, "maml.init_std must be > 0")
        _require(self.eval_exploration_episodes >= 1, "maml.eval_exploration_episodes must be >= 1")
        _require(self.eval_inner_steps is None or self.eval_inner_steps >= 0, "maml.eval_inner_steps must be >= 0")

    def episodes_per_task(self) -> int:
        """Episodes collected per task and epoch: before each inner step and after the last."""
        return self.rollouts_per_task * (self.inner_steps + 1)


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
            _require(getattr(self, name) >= 1, f"pearl.{name} must be >= 1")
        for name in ("initial_steps", "prior_steps", "posterior_steps", "extra_posterior_steps"):
            _require(getattr(self, name) >= 0, f"pearl.{name} must be >= 0")
        _require(self.initial_steps + self.prior_steps + self.posterior_steps > 0,
                 "pearl: initial_steps, prior_steps and posterior_steps are all 0: the encoder has no data")
        _require(0.0 < self.discount <= 1.0, "pearl.discount must be in (0, 1]")
        _require(0.0 < self.tau <= 1.0, "pearl.tau must be in (0, 1]")
        _require(min(self.policy_lr, self.qf_lr, self.vf_lr, self.context_lr) > 0, "pearl learning rates must be > 0")
        _require(self.reward_scale > 0, "pearl.reward_scale must be > 0")
        _require(self.kl_weight >= 0, "pearl.kl_weight must be >= 0")
        _require(self.eval_exploration_episodes >= 0, "pearl.eval_exploration_episodes must be >= 0")

    def episodes(self, steps: int, horizon: int) -> int:
        """`steps` in whole episodes of `horizon` steps (the authors collect whole paths until
        the count is reached)."""
        return math.ceil(steps / horizon)

    def iteration_episodes(self, horizon: int) -> int:
        """Episodes per task and iteration (prior, posterior and extra posterior)."""
        return sum(self.episodes(s, horizon) for s in (self.prior_steps, self.posterior_steps,
                                                      self.extra_posterior_steps))


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
    vae_max_grad_norm: float = 1.0
    """Gradient-norm clip of the VAE step."""
    normalize_inputs: bool = True
    """Normalise the policy's (state, belief) input by running mean and variance."""
    normalize_rewards: bool = True
    """Divide the policy's rewards by the running standard deviation of discounted returns (the
    VAE always sees raw rewards)."""

    def __post_init__(self) -> None:
        for name in ("latent_size", "gru_hidden", "vae_buffer", "vae_batch", "subsample_elbos", "subsample_decodes"):
            _require(getattr(self, name) >= 1, f"varibad.{name} must be >= 1")
        _require(self.vae_updates >= 0, "varibad.vae_updates must be >= 0")
        _require(self.vae_lr > 0, "varibad.vae_lr must be > 0")
        _require(self.kl_weight >= 0, "varibad.kl_weight must be >= 0")
        _require(self.init_std > 0, "varibad.init_std must be > 0")


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
    """Normalise advantages per minibatch (paper: off)."""
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

    def __post_init__(self) -> None:
        _require(0.0 < self.gamma <= 1.0, "ppo.gamma must be in (0, 1]")
        _require(0.0 <= self.gae_lambda <= 1.0, "ppo.gae_lambda must be in [0, 1]")
        _require(self.clip_coef > 0.0, "ppo.clip_coef must be > 0")
        _require(self.update_epochs >= 1, "ppo.update_epochs must be >= 1")
        _require(self.minibatch_size >= 1, "ppo.minibatch_size must be >= 1")
        _require(self.policy_lr > 0 and self.value_lr > 0, "ppo learning rates must be > 0")
        _require(0.0 < self.min_lr_factor <= 1.0, "ppo.min_lr_factor must be in (0, 1]")
        _require(
            0 <= self.decay_epoch_start < self.decay_epoch_end,
            "ppo.decay_epoch_start must be >= 0 and < ppo.decay_epoch_end",
        )
        _require(self.max_grad_norm is None or self.max_grad_norm > 0, "ppo.max_grad_norm must be > 0")


@dataclass(frozen=True)
class EvalConfig:
    """Meta-testing: trials on tasks from a held-out seed stream, never the training stream."""

    every_epochs: int = 5
    """Run the during-training protocol every this many epochs (0: never)."""
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
        from trmrl.evaluate import PROTOCOLS

        unknown = [name for name in self.also if name not in PROTOCOLS]
        _require(not unknown, f"eval.also: unknown protocol(s) {', '.join(unknown)}; choose from {', '.join(PROTOCOLS)}")
        _require(self.every_epochs >= 0, "eval.every_epochs must be >= 0")
        for name in ("n_tasks", "episodes", "final_n_tasks", "final_episodes"):
            _require(getattr(self, name) >= 1, f"eval.{name} must be >= 1")


@dataclass(frozen=True)
class TrainConfig:
    """One meta-training run."""

    preset: tyro.conf.Suppress[str] = "point-nav"
    """Name of the preset this config started from (recorded in the run directory)."""
    algo: str = "trmrl"
    """Meta-RL algorithm (`trmrl algos` lists them); the preset's when omitted."""
    seed: int = 1
    """Root of every random stream (tasks, env resets, actions, minibatches, init)."""
    total_env_steps: int = 400_000
    """Meta-training budget in environment steps (rounded up to whole epochs)."""
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    """The TrMRL agent (`--algo trmrl`)."""
    rl2: RL2Config = field(default_factory=RL2Config)
    maml: MAMLConfig = field(default_factory=MAMLConfig)
    pearl: PEARLConfig = field(default_factory=PEARLConfig)
    varibad: VariBADConfig = field(default_factory=VariBADConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
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

    def __post_init__(self) -> None:
        from trmrl.algos import check_name

        check_name(self.algo)
        _require(self.total_env_steps >= 1, "total_env_steps must be >= 1")
        _require(self.checkpoint_every >= 1, "checkpoint_every must be >= 1")
        _require(self.torch_threads >= 0, "torch_threads must be >= 0")
        _require(self.dist_timeout > 0, "dist_timeout must be > 0")
        if self.algo not in ("maml", "pearl"):  # PPO's minibatches are drawn from an epoch's samples
            _require(self.ppo.minibatch_size <= self.steps_per_epoch,
                     f"ppo.minibatch_size ({self.ppo.minibatch_size}) is larger than an epoch's "
                     f"{self.steps_per_epoch} samples (task.tasks_per_epoch x episodes x steps); use at most that")

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with `changes`; a section takes a dict of its own changes, e.g.
        `config.replace(seed=2, model={"window": 1})`. Validated like any config."""
        for name, value in changes.items():
            if isinstance(value, dict):
                changes[name] = dataclasses.replace(getattr(self, name), **value)
        return dataclasses.replace(self, **changes)

    def task_options(self) -> dict[str, Any]:
        """What a task distribution may take from the run (`trmrl.tasks.TASK_OPTIONS`)."""
        t = self.task
        return {"seed": self.seed, "reward_function_version": t.reward_function_version,
                "remembered_action": t.remembered_action, "goal_radius": t.goal_radius, "goal_arc": t.goal_arc, "step_size": t.step_size}

    @property
    def steps_per_epoch(self) -> int:
        """Environment steps collected per epoch: B trials of T steps (MAML: B tasks x its
        episodes per task of H steps; PEARL: its tasks per iteration x their episodes)."""
        h = self.task.max_episode_steps
        if self.algo == "maml":
            return self.task.tasks_per_epoch * self.maml.episodes_per_task() * h
        if self.algo == "pearl":
            return self.pearl.tasks_per_iteration * self.pearl.iteration_episodes(h) * h
        return self.task.tasks_per_epoch * self.task.steps_per_trial

    @property
    def initial_env_steps(self) -> int:
        """Steps collected once before the first epoch's own (PEARL's initial pool), 0 otherwise."""
        if self.algo == "pearl":
            h = self.task.max_episode_steps
            return self.pearl.n_train_tasks * self.pearl.episodes(self.pearl.initial_steps, h) * h
        return 0

    def env_steps_after(self, epochs: int) -> int:
        """Environment steps collected by the end of `epochs` epochs."""
        return (self.initial_env_steps if epochs else 0) + epochs * self.steps_per_epoch

    @property
    def n_epochs(self) -> int:
        return max(1, math.ceil((self.total_env_steps - self.initial_env_steps) / self.steps_per_epoch))


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass."""
    out = dataclasses.asdict(config)

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


def _union_args(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)
