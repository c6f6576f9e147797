"""Several processes (torch.distributed, gloo on 127.0.0.1, one thread each) against one: the
same data, the same parameters on every rank, the one-process result within float rounding;
and a bad launch ends in one error line with the last checkpoint intact."""

import copy
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import tiny_config

from trmrl import checkpoint, distributed
from trmrl.algos import load_config, make_algorithm
from trmrl.config import TrainConfig, to_dict
from trmrl.evaluate import MetaTester, during_training
from trmrl.log import read_metrics
from trmrl.rundir import RunDir
from trmrl.seeding import Stream, numpy_rng, task_streams
from trmrl.tasks import make_task_distribution
from trmrl.train import train

EPOCHS = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_rank(rank: int, world: int, port: int) -> dict[str, str]:
    """The environment torchrun gives a process."""
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world)}


def run_epochs(config: TrainConfig) -> dict:
    """EPOCHS iterations as the training loop runs them; per epoch, the rollout collected before
    its update (the policy the epoch starts from) and the state after it."""
    distribution = make_task_distribution(config.task.name, **config.task_options())
    algorithm = make_algorithm(config, distribution)
    out: dict = {"rollouts": [], "states": [], "metrics": []}
    for epoch in range(EPOCHS):
        tasks = distribution.sample(numpy_rng(config.seed, Stream.TRAIN_TASKS, epoch), config.task.tasks_per_epoch,
                                    "train")
        streams = task_streams(config.seed, Stream.TRAIN_ENVS, Stream.TRAIN_ACTIONS, epoch, range(len(tasks)))
        out["rollouts"].append(distributed.collect(algorithm.sampler, algorithm.policy, tasks, *streams))
        out["metrics"].append(algorithm.train_iteration(tasks, epoch))
        out["states"].append(copy.deepcopy(algorithm.state_dict()))
    # meta-tests of 3 tasks (shares of 2 and 1) and of 1 (one process idle), split and gathered
    for n in (1, 3):
        tester = MetaTester(distribution, during_training(n, 2, True), config.task.max_episode_steps, 0)
        out[f"meta_test_{n}"] = tester.run(algorithm.meta_learner()).returns
    return out


def worker(rank: int, world: int, port: int, config: dict, out_dir: str) -> None:
    os.environ.update(as_rank(rank, world, port))
    torch.set_num_threads(1)
    with distributed.session("cpu", timeout=60):
        torch.save(run_epochs(load_config(config)), Path(out_dir) / f"rank{rank}.pt")


def named(state, prefix=""):
    """(path, tensor) of every tensor in a nested state."""
    if isinstance(state, torch.Tensor):
        yield prefix, state
    elif isinstance(state, dict):
        for key in sorted(state, key=str):
            yield from named(state[key], f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(state, (list, tuple)):
        for i, item in enumerate(state):
            yield from named(item, f"{prefix}.{i}")


@pytest.mark.parametrize("algo", ["trmrl", "trmrl-whole", "rl2", "varibad"])
def test_two_processes_match_one(tmp_path, algo):
    # the point-nav preset's entropy bonus and gradient clipping: each process adds its share of
    # the entropy term, and the norm is clipped once, on the summed gradient; 'whole' memory
    # splits minibatches of whole trials (3, 3 and 2 of the 8) over the processes
    ppo_config = dataclasses.replace(tiny_config().ppo, ent_coef=0.02, max_grad_norm=0.5)
    if algo == "trmrl-whole":
        config = tiny_config(ppo=ppo_config, model=dataclasses.replace(tiny_config().model, memory="whole"))
    else:
        config = tiny_config(algo=algo, ppo=ppo_config)
    mp.start_processes(worker, args=(2, free_port(), to_dict(config), str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    one = run_epochs(config)
    # every rank holds the rollout one process collects from the same parameters (epoch 0): the
    # same tasks, resets, random draws and episode boundaries, and the same numbers up to the
    # rounding of the policy's batched matmuls, which differs for 4 rows (a rank's envs) and 8
    # (about 3e-7 here; tests/test_trial_sampler.py shows it on one process)
    for rank in ranks:
        for name, value in vars(one["rollouts"][0]).items():
            if value is None:
                continue
            if value.is_floating_point():
                torch.testing.assert_close(getattr(rank["rollouts"][0], name), value, rtol=1e-5, atol=1e-5)
            else:
                assert torch.equal(getattr(rank["rollouts"][0], name), value), name
    # the ranks hold identical parameters and optimiser states after every epoch
    for epoch in range(EPOCHS):
        for (_, a), (_, b) in zip(named(ranks[0]["states"][epoch]), named(ranks[1]["states"][epoch]), strict=True):
            assert torch.equal(a, b)
    for n in (1, 3):
        for rank in ranks:
            np.testing.assert_allclose(rank[f"meta_test_{n}"], one[f"meta_test_{n}"], rtol=1e-4, atol=1e-4)
    # ... and those of one process within float rounding. Each minibatch gradient is summed in
    # another order (two half sums, then the all-reduce), about 1e-7 relative; Adam divides by
    # the gradient's own scale, so where the exact gradient is zero its rounding noise still
    # moves a parameter by up to the learning rate per step. The attention's key bias is such a
    # parameter (softmax ignores a shift common to a query's scores) and differs by up to 3e-4
    # here; every other parameter agrees within 6e-6 (measured), under the 5e-5 bound, a sixth of
    # one step at lr 3e-4, so a gradient share lost or counted twice would fail it.
    for name, key in (("policy_loss", "losses/policy_loss"), ("value_loss", "losses/value_loss")):
        assert ranks[0]["metrics"][0][key] == pytest.approx(one["metrics"][0][key], rel=1e-5, abs=1e-6), name
    worst = 0.0
    for (name, value), (_, theirs) in zip(named(one["states"][-1]), named(ranks[0]["states"][-1]), strict=True):
        if name.endswith("self_attn.in_proj.bias"):
            d = len(value) // 3
            value, theirs = torch.cat([value[:d], value[2 * d :]]), torch.cat([theirs[:d], theirs[2 * d :]])
        if value.is_floating_point() and value.numel():
            worst = max(worst, float((value - theirs).abs().max()))
    assert worst < 5e-5
    moved = max(float((a - b).abs().max()) for (_, a), (_, b) in zip(named(one["states"][1]), named(one["states"][0]))
                if a.is_floating_point() and a.numel() and a.shape == b.shape)
    assert moved > 1e-3  # an epoch moves the parameters by far more than the bound


SMALL = ["--task.tasks-per-epoch", "8", "--eval.every-epochs", "0", "--eval.final-n-tasks", "4",
         "--model.d-model", "16", "--checkpoint-every", "1", "--no-progress"]


def trmrl(*args, env=None, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "trmrl", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=os.environ | {"OMP_NUM_THREADS": "1"} | (env or {}), **kwargs)


def finished(process, timeout=120):
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err.strip().splitlines()


def test_nproc_and_torchrun_train_resume_with_another_count_and_evaluate(tmp_path):
    run = tmp_path / "run"
    code, out, err = finished(trmrl("train", "point-nav", "--nproc", "2", "--total-env-steps", "1280",
                                    "--run-dir", str(run), *SMALL))
    assert code == 0, err
    assert out.count(f"run directory: {run}") == 2 and out.count("meta-test (adaptation)") == 1  # rank 0 prints
    assert checkpoint.load(RunDir(run).checkpoint)["epoch"] == 4
    code, _, err = finished(trmrl("train", "--resume", str(run), "--total-env-steps", "1920", "--no-progress"))
    assert code == 0, err
    assert checkpoint.load(RunDir(run).checkpoint)["epoch"] == 6
    records = [r for r in read_metrics(run) if "losses/policy_loss" in r]
    assert [r["epoch"] for r in records] == list(range(6))
    assert all(("time/communication_update" in r) == (r["epoch"] < 4) for r in records)  # two processes, then one
    # torchrun's own form, two processes again
    torchrun = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                                 "-m", "trmrl", "train", "--resume", str(run), "--total-env-steps", "2560",
                                 "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    code, out, err = finished(torchrun)
    assert code == 0, err
    assert checkpoint.load(RunDir(run).checkpoint)["epoch"] == 8 and out.count("meta-test (adaptation)") == 1
    code, out, err = finished(trmrl("eval", str(run), "--n-tasks", "4", "--episodes", "2"))
    assert code == 0, err
    assert (run / "eval" / "adaptation-4x2-seed0.json").is_file()
    # the run of 2, then 1, then 2 processes learned what one uninterrupted process learns, up to
    # the rounding of summing gradients in another order (test_two_processes_match_one)
    config = load_config(json.loads((run / "config.json").read_text())).replace(total_env_steps=2560)
    train(config, tmp_path / "one")
    records = [r for r in read_metrics(run) if "losses/policy_loss" in r]
    alone = [r for r in read_metrics(tmp_path / "one") if "losses/policy_loss" in r]
    assert len(records) == len(alone) == 8
    for mine, theirs in zip(records, alone):
        for key in ("charts/episode_return", "losses/policy_loss", "losses/value_loss", "charts/action_std"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-3, abs=1e-4), (mine["epoch"], key)
    np.testing.assert_allclose(*(json.loads((d / "eval" / "adaptation.json").read_text())["returns"]
                                 for d in (run, tmp_path / "one")), rtol=1e-3, atol=1e-3)


def test_bad_launches_end_in_one_line(tmp_path):
    # counts that do not divide, an algorithm that trains in one process: refused before launching
    for args, fragment in ((["--nproc", "3", *SMALL], "multiple of the number of processes (3)"),
                           (["--algo", "maml", "--nproc", "2", *SMALL[:6]], "'maml' trains in one process")):
        code, _, err = finished(trmrl("train", "point-nav", *args, "--run-dir", str(tmp_path / "r")))
        assert code == 2 and len(err) == 1 and fragment in err[0], err
    assert not (tmp_path / "r").exists()
    # a rendezvous nobody answers (a launch of rank 1 whose rank 0 never came): one line after the timeout
    code, _, err = finished(trmrl("train", "point-nav", "--run-dir", str(tmp_path / "r"), "--dist-timeout", "2", *SMALL,
                                  env=as_rank(1, 2, free_port())))
    assert code == 2 and len(err) == 1 and "[process 1 of 2] could not join" in err[0], err


def test_a_rank_that_dies_stops_the_others_and_keeps_the_checkpoint(tmp_path):
    run, port = tmp_path / "run", free_port()
    ranks = [trmrl("train", "point-nav", "--total-env-steps", "64000", "--run-dir", str(run), *SMALL,
                   env=as_rank(r, 2, port)) for r in range(2)]
    deadline = time.monotonic() + 60
    while not RunDir(run).checkpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    ranks[1].send_signal(signal.SIGKILL)
    code, _, err = finished(ranks[0])
    assert code == 2 and len(err) == 1, err
    assert "[process 0 of 2] training stopped at epoch" in err[0] and "last good checkpoint kept" in err[0]
    ranks[1].wait()
    saved = checkpoint.load(RunDir(run).checkpoint)["epoch"]
    assert saved >= 1
    code, _, err = finished(trmrl("train", "--resume", str(run), "--total-env-steps", str(320 * (saved + 1)),
                                  "--no-progress"))
    assert code == 0, err  # the run goes on from it in one process...
    # ...with one training record per epoch: what the dead attempt logged past its checkpoint is gone
    assert [r["epoch"] for r in read_metrics(run) if "losses/policy_loss" in r] == list(range(saved + 1))
    assert checkpoint.load(RunDir(run).checkpoint)["epoch"] == saved + 1


def test_device_option(tmp_path):
    from trmrl.errors import ConfigError

    assert distributed.resolve_device("cpu") == torch.device("cpu")
    assert distributed.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("gpu", "cuda:x"):
        with pytest.raises(ConfigError, match="unknown device"):
            distributed.resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no usable CUDA GPU"):
            distributed.resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("algo", ["trmrl", "rl2"])
def test_cuda_matches_cpu(algo):
    """The model, update and inference on the GPU, the simulation on the CPU: the same run as on
    the CPU within float rounding (GPU kernels sum in other orders). Checked where rounding is all
    that can differ: the first rollout (the same initial parameters), the first update's losses,
    and the parameters after it, to a tenth of what that update moved them."""
    config = tiny_config(algo=algo)
    results = {}
    for option in ("cpu", "cuda"):
        with distributed.session(option):
            results[option] = run_epochs(config)
    cpu, cuda = results["cpu"], results["cuda"]
    assert cuda["rollouts"][0].obs.device.type == "cpu"  # rollouts come back to the host
    for name, value in vars(cpu["rollouts"][0]).items():
        if value is None:
            continue
        theirs = getattr(cuda["rollouts"][0], name)
        if value.is_floating_point():
            torch.testing.assert_close(theirs, value, rtol=1e-4, atol=1e-4, msg=name)
        else:
            assert torch.equal(theirs, value), name
    for key in ("losses/policy_loss", "losses/value_loss", "losses/approx_kl"):
        assert cuda["metrics"][0][key] == pytest.approx(cpu["metrics"][0][key], rel=1e-3, abs=1e-5), key
    initial = make_algorithm(config, make_task_distribution(config.task.name, **config.task_options())).state_dict()
    for (name, before), (_, a), (_, b) in zip(named(initial["model"]), named(cpu["states"][0]["model"]),
                                              named(cuda["states"][0]["model"]), strict=True):
        assert b.device.type == "cuda", name
        if name.endswith("self_attn.in_proj.bias"):  # the key bias: its gradient is rounding noise
            d = len(a) // 3                          # (test_two_processes_match_one)
            before, a, b = (torch.cat([x[:d], x[2 * d :]]) for x in (before, a, b))
        moved = float((a - before).abs().max())
        assert float((a - b.cpu()).abs().max()) <= max(moved / 10, 1e-6), name
