"""Speed of trmrl against the machine's limits and against a peer, in ONE run, as markdown.

    python benchmarks/speed.py [--quick] [--skip-peer] > table.md

Every figure in a table comes from this run on this machine (which may be shared and noisy, so
compare ratios within a table, not across runs). Sections:
  1. peak matrix-multiply FLOP/s on the threads torch uses (fp32, bf16);
  2. simulation floor: bare `mujoco` stepping and gymnasium's SyncVectorEnv, random actions;
  3. trmrl's trial sampler with the TrMRL policy on the same tasks;
  4. the PPO update: samples/s and model FLOP/s against the measured peak;
  5. end to end: `trmrl train cheetah-vel --algo trmrl|rl2` for a few epochs (eval off), split;
  6. a peer: sb3-contrib RecurrentPPO (LSTM) on the same cheetah-vel trials (if installed);
  7. scaling of the epoch time with B (tasks), W (window) and d_model.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from trmrl.algos.trmrl import TrMRL, TrMRLPolicy, make_batch, ppo_update
from trmrl.config import TrainConfig
from trmrl.presets import get_preset
from trmrl.seeding import Stream, numpy_rng, task_streams
from trmrl.tasks import make_task_distribution
from trmrl.log import read_metrics
from trmrl.train import train


def timed(fn: Callable[[], object], repeat: int = 1) -> float:
    """Best wall time of `repeat` calls, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def table(title: str, header: list[str], rows: list[list[object]]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(f"{v:,.3g}" if isinstance(v, float) else str(v) for v in row) + " |")
    sys.stdout.flush()


# 1. peak matmul -----------------------------------------------------------------------------

def matmul_flops(m: int, k: int, n: int, dtype: torch.dtype, seconds: float = 0.5, repeat: int = 3) -> float:
    """Best of `repeat` windows of `seconds` (the machine is shared: the best window is the
    closest to what the cores can do)."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(repeat):
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            a @ b
            count += 1
        best = max(best, 2 * m * k * n * count / (time.perf_counter() - start))
    return best


# 2. simulation floor ------------------------------------------------------------------------

def bare_mujoco(model_file: str, n_envs: int, steps: int) -> float:
    import mujoco
    from gymnasium.envs.mujoco import mujoco_env

    path = Path(mujoco_env.__file__).parent / "assets" / model_file
    model = mujoco.MjModel.from_xml_path(str(path))
    datas = [mujoco.MjData(model) for _ in range(n_envs)]
    rng = np.random.default_rng(0)

    def run() -> None:
        for _ in range(steps):
            for data in datas:
                data.ctrl[:] = rng.uniform(-1, 1, model.nu)
                mujoco.mj_step(model, data, nstep=5)

    return n_envs * steps / timed(run)


def sync_vector_env(env_id: str, n_envs: int, steps: int) -> float:
    import gymnasium as gym

    envs = gym.vector.SyncVectorEnv([lambda: gym.make(env_id) for _ in range(n_envs)])
    envs.reset(seed=0)
    envs.action_space.seed(0)

    def run() -> None:
        for _ in range(steps):
            envs.step(envs.action_space.sample())

    rate = n_envs * steps / timed(run)
    envs.close()
    return rate


# 3-4. sampler and update --------------------------------------------------------------------

class TimedPolicy:
    """Forwards to a policy and accumulates the time spent in it."""

    def __init__(self, policy: TrMRLPolicy) -> None:
        self.policy, self.seconds, self.calls = policy, 0.0, 0

    def initial_state(self, n: int):  # type: ignore[no-untyped-def]
        return self.policy.initial_state(n)

    def act(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        out = self.policy.act(*args, **kwargs)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out

    def value(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return self.policy.value(*args, **kwargs)


def model_flops_per_window(config: TrainConfig, obs_dim: int, act_dim: int) -> float:
    """Forward + backward FLOPs (3x forward) of one window through the paper's model, every
    position in every layer (as the paper's model computes them), with the policy head."""
    m = config.model
    d, w = m.d_model, m.window
    per_token = 2 * (obs_dim * d + m.n_layers * (4 * d * d + 2 * d * m.d_ff)) + m.n_layers * 4 * w * d
    head = 2 * sum(a * b for a, b in zip((d, *m.head_hidden), (*m.head_hidden, act_dim)))
    return 3.0 * (w * per_token + head)


def sample_and_update(config: TrainConfig) -> dict[str, float]:
    distribution = make_task_distribution(config.task.name)
    learner = TrMRL(config, distribution)
    sampler = learner.sampler
    tasks = distribution.sample(numpy_rng(0, Stream.TRAIN_TASKS, 0), config.task.tasks_per_epoch, "train")
    policy = TimedPolicy(learner.policy)
    streams = task_streams(0, Stream.TRAIN_ENVS, Stream.TRAIN_ACTIONS, 0, range(len(tasks)))
    start = time.perf_counter()
    rollout = sampler.collect(policy, tasks, *streams)
    sampling = time.perf_counter() - start
    start = time.perf_counter()
    batch = make_batch(rollout, config.ppo, learner.policy)
    ppo_update(learner.model, learner.optimizers.policy, learner.optimizers.value, batch, config.ppo,
               torch.Generator().manual_seed(0), learner.schedules, first_step=0)
    update = time.perf_counter() - start
    passes = config.ppo.update_epochs * len(batch)
    flops = model_flops_per_window(config, sampler.obs_dim, sampler.act_dim) * passes
    return {"steps": rollout.num_steps, "sampling": sampling, "policy": policy.seconds, "calls": policy.calls,
            "update": update, "samples": len(batch), "flops": flops}


def end_to_end(config: TrainConfig, epochs: int) -> tuple[float, float, float]:
    """(median sampling s, median update s, env steps/s) of `trmrl train` for a few epochs, eval off."""
    config = config.replace(total_env_steps=epochs * config.steps_per_epoch, progress=False,
                            eval={"every_epochs": 0, "final_n_tasks": 1, "final_episodes": 1})
    with tempfile.TemporaryDirectory() as tmp:
        train(config, Path(tmp))
        records = [r for r in read_metrics(Path(tmp)) if "time/update" in r]
    sampling = float(np.median([r["time/sampling"] for r in records]))
    update = float(np.median([r["time/update"] for r in records]))
    return sampling, update, config.steps_per_epoch / (sampling + update)


# 6. peer ------------------------------------------------------------------------------------

def recurrent_ppo(total_steps: int) -> float | None:
    """Env steps/s of sb3-contrib RecurrentPPO (default LSTM policy, 10 epochs) on cheetah-vel
    trials of 2 x 200 steps, a new task per trial; None if sb3-contrib is not installed."""
    try:
        from sb3_contrib import RecurrentPPO
    except ImportError:
        return None
    import gymnasium as gym

    from trmrl.trial import TrialEnv

    class CheetahVelTrials(gym.Wrapper):
        def __init__(self) -> None:
            self.distribution = make_task_distribution("cheetah-vel")
            super().__init__(TrialEnv(self.distribution.make_env(), 2, 200))
            self.rng = np.random.default_rng(0)

        def reset(self, **kwargs):  # type: ignore[no-untyped-def]
            task = self.distribution.sample(self.rng, 1, "train")[0]
            return self.env.reset(seed=kwargs.get("seed"), options={"task": task})

    from stable_baselines3.common.vec_env import DummyVecEnv

    env = DummyVecEnv([CheetahVelTrials for _ in range(20)])
    model = RecurrentPPO("MlpLstmPolicy", env, n_steps=400, batch_size=256, n_epochs=10, seed=0, verbose=0,
                         device="cpu")
    start = time.perf_counter()
    model.learn(total_timesteps=total_steps)
    return total_steps / (time.perf_counter() - start)


# main ---------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter measurements (noisier)")
    parser.add_argument("--skip-peer", action="store_true", help="skip sb3-contrib RecurrentPPO")
    parser.add_argument("--epochs", type=int, default=3, help="end-to-end epochs")
    args = parser.parse_args()
    steps = 50 if args.quick else 200

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}")
    square, ffn = matmul_flops(2048, 2048, 2048, torch.float32), matmul_flops(1280, 128, 512, torch.float32)
    fp32 = max(square, ffn)  # the peak the update's ratio is taken against
    rows = [["2048 x 2048 @ 2048 x 2048", "fp32", square / 1e9],
            ["FFN shape 1280 x 128 @ 128 x 512", "fp32", ffn / 1e9],
            ["2048 x 2048 @ 2048 x 2048", "bf16", matmul_flops(2048, 2048, 2048, torch.bfloat16) / 1e9]]
    table("1. Peak matrix multiply (best of 3 half-second windows; peak = the larger fp32 figure)",
          ["shape", "dtype", "GFLOP/s"], rows)

    floors = {"cheetah-vel": (bare_mujoco("half_cheetah.xml", 20, steps), sync_vector_env("HalfCheetah-v5", 20, steps)),
              "ant-dir": (bare_mujoco("ant.xml", 20, steps), sync_vector_env("Ant-v5", 20, steps))}
    table("2. Simulation floor (B = 20, random actions)", ["task", "bare mujoco steps/s", "gymnasium SyncVectorEnv steps/s"],
          [[task, a, b] for task, (a, b) in floors.items()])

    results = {}
    for preset in ("cheetah-vel", "ant-dir"):
        results[preset] = sample_and_update(get_preset(preset))
    rows = []
    for preset, r in results.items():
        rate = r["steps"] / r["sampling"]
        rows.append([preset, rate, rate / floors[preset][1], 1e3 * r["policy"] / r["calls"],
                     1e3 * (r["sampling"] - r["policy"]) / r["calls"]])
    table("3. trmrl trial sampler with the TrMRL policy (B = 20, paper model)",
          ["task", "steps/s", "ratio to SyncVectorEnv", "policy ms / vector step", "env + sampler ms / vector step"], rows)

    rows = []
    for preset, r in results.items():
        rate = r["flops"] / r["update"]
        rows.append([preset, r["update"], r["samples"] / r["update"], rate / 1e9, rate / fp32])
    table("4. PPO update, one epoch (10 policy + 10 value passes, minibatch 256)",
          ["task", "s / epoch", "samples/s", "model GFLOP/s", "ratio to fp32 peak"], rows)

    ends = {algo: end_to_end(get_preset("cheetah-vel", algo), args.epochs) for algo in ("trmrl", "rl2")}
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    steps_per_epoch = get_preset("cheetah-vel").steps_per_epoch
    rows = [[algo, sampling, update, sampling + update, sps, steps_per_epoch / sampling / floors["cheetah-vel"][1],
             2e7 / sps / 3600] for algo, (sampling, update, sps) in ends.items()]
    table(f"5. End to end: trmrl train cheetah-vel --algo A, {args.epochs} epochs (median epoch; "
          f"peak RSS of the whole script {peak_mb:.0f} MB)",
          ["algorithm", "sampling s", "update s", "epoch s", "env steps/s", "sampler ratio to SyncVectorEnv",
           "2e7 steps, hours"], rows)

    if not args.skip_peer:
        peer = recurrent_ppo(8000 if args.quick else 16000)
        rows = [[f"trmrl --algo {algo}", sps, sps / ends["trmrl"][2]] for algo, (_, _, sps) in ends.items()]
        if peer is None:
            rows.append(["sb3-contrib RecurrentPPO", "not installed (pip install sb3-contrib)", ""])
        else:
            rows.append(["sb3-contrib RecurrentPPO (MlpLstmPolicy, 10 epochs)", peer, peer / ends["trmrl"][2]])
        table("6. Peer on the same cheetah-vel trials", ["agent", "env steps/s", "ratio to trmrl --algo trmrl"], rows)

    rows = []
    base = get_preset("cheetah-vel")
    variants = [("B = 10", dict(task=dataclasses.replace(base.task, tasks_per_epoch=10))),
                ("B = 20 (paper)", {}),
                ("B = 40", dict(task=dataclasses.replace(base.task, tasks_per_epoch=40))),
                ("W = 1", dict(model=dataclasses.replace(base.model, window=1))),
                ("W = 25", dict(model=dataclasses.replace(base.model, window=25))),
                ("d_model = 64", dict(model=dataclasses.replace(base.model, d_model=64))),
                ("d_model = 256", dict(model=dataclasses.replace(base.model, d_model=256))),
                ("all positions in the last layer", dict(model=dataclasses.replace(base.model, newest_only_last_layer=False)))]
    for name, change in variants:
        config = dataclasses.replace(base, **change)
        config = dataclasses.replace(config, ppo=dataclasses.replace(config.ppo, update_epochs=2 if args.quick else 10))
        r = sample_and_update(config)
        scale = base.ppo.update_epochs / config.ppo.update_epochs
        rows.append([name, r["sampling"], r["update"] * scale, r["sampling"] + r["update"] * scale])
    from trmrl.nets.transformer import CausalSelfAttention

    config = dataclasses.replace(base, ppo=dataclasses.replace(base.ppo, update_epochs=2 if args.quick else 10))
    scale = base.ppo.update_epochs / config.ppo.update_epochs
    for name, fused, threads in (("fused SDPA attention kernel", True, torch.get_num_threads()),
                                 ("1 intra-op thread", False, 1)):
        previous = torch.get_num_threads()
        CausalSelfAttention.fused = fused
        torch.set_num_threads(threads)
        r = sample_and_update(config)
        CausalSelfAttention.fused = False
        torch.set_num_threads(previous)
        rows.append([name, r["sampling"], r["update"] * scale, r["sampling"] + r["update"] * scale])
    table("7. Scaling and variants: cheetah-vel epoch (update scaled to 10 passes)",
          ["variant", "sampling s", "update s", "epoch s"], rows)


if __name__ == "__main__":
    main()
