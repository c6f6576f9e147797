"""Data-parallel meta-training over torch.distributed: gloo on CPUs, NCCL on GPUs, started by
`torchrun ... -m trmrl train PRESET` (or `trmrl train PRESET --nproc N`, which starts the same
on one machine through torch's elastic launcher).

An epoch on N processes (ranks):

    collect   task i of the epoch runs on rank i mod N, from task i's own streams
              (`seeding.task_streams`), so rank r steps tasks r, r + N, ...
    gather    the ranks' rollouts are interleaved back into task order: every rank holds the
              rollout one process collects with the same seed
    update    every rank builds the same batch and draws the same minibatch permutation (both
              derive from the seed); each minibatch's rows are dealt round-robin, a rank
              back-propagates its rows' share of the loss (their sum over the minibatch's
              sample count, advantages normalised with the whole minibatch's statistics, all
              read from the batch it holds) and one all-reduce per step sums the gradients,
              with the loss riding along so that a non-finite loss on any rank stops every
              rank. The optimisers then step alike everywhere: parameters and optimiser states
              stay equal without being sent.

The gradients go through one explicit all-reduce of a flat buffer rather than
DistributedDataParallel: a PPO update steps two optimisers over two parameter subsets of one
model, one forward per minibatch on a part of the model, which DDP's per-forward hooks and
unused-parameter search do not fit, while a flat buffer is one collective per step whatever the
model. The meta-test is split the same way (task i on rank i mod N) and gathered.

Outside a torchrun launch (no WORLD_SIZE in the environment) the world is this process alone
and every function here is the identity.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from trmrl.errors import ConfigError, DistributedError

if TYPE_CHECKING:
    from trmrl.protocols import Policy
    from trmrl.sampler import Rollout, TrialSampler
    from trmrl.tasks import Task

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank of size, and the device its model lives on."""

    rank: int = 0
    size: int = 1
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))


_world = World()
_communication_seconds: dict[str, float] = {}


def world() -> World:
    return _world


def is_main() -> bool:
    """Rank 0: the process that logs, prints and writes checkpoints."""
    return _world.rank == 0


def device() -> torch.device:
    """Where this process's model, update and policy inference run (the simulation stays on the CPU)."""
    return _world.device


def resolve_device(option: str, local_rank: int = 0) -> torch.device:
    """`--device auto|cpu|cuda|cuda:K` for the process of `local_rank` on its machine: auto and
    cuda take the GPU of that index (one GPU per rank); auto falls back to the CPU."""
    if option == "cpu":
        return torch.device("cpu")
    if option == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if option != "cuda" and not (option.startswith("cuda:") and option[5:].isdigit()):
        raise ConfigError(f"unknown device '{option}'; choose auto, cpu, cuda or cuda:K")
    if not torch.cuda.is_available():
        raise ConfigError(f"device '{option}': this machine (torch {torch.__version__}) has no usable CUDA GPU; "
                          f"use --device cpu or auto")
    index = local_rank if option == "cuda" else int(option[5:])
    if index >= torch.cuda.device_count():
        raise ConfigError(f"device cuda:{index}: this machine has {torch.cuda.device_count()} GPU(s)")
    return torch.device("cuda", index)


def _rendezvous() -> str:
    return f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"


@contextlib.contextmanager
def session(device_option: str = "auto", timeout: float = 300.0) -> Iterator[World]:
    """This process's part of the run: joined to the others when launched by torchrun (RANK and
    WORLD_SIZE in the environment), else alone; the group is left at the end. `timeout`
    (seconds) bounds the wait for the others at the rendezvous and at every collective."""
    global _world
    size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    placed = resolve_device(device_option, local_rank)
    if size > 1:
        if placed.type == "cuda":
            torch.cuda.set_device(placed)
        try:
            dist.init_process_group("nccl" if placed.type == "cuda" else "gloo", rank=rank, world_size=size,
                                    timeout=timedelta(seconds=timeout))
        except (RuntimeError, ValueError) as exc:  # a store timeout, a refused or unreachable endpoint
            raise DistributedError(f"could not join the run's other processes at {_rendezvous()} within {timeout:g} s "
                                   f"({_first_line(exc)})") from None
    _world = World(rank, size, placed)
    finished = False
    try:
        yield _world
        finished = True
    finally:
        _world = World()
        if size > 1 and dist.is_initialized():
            try:
                if finished:
                    # every process past its last collective before any closes its connections: a
                    # peer torn down while another still reads from it can abort that one
                    _collective(dist.barrier, "the end of the run")
            finally:
                dist.destroy_process_group()


def launch(nproc: int, argv: Sequence[str], threads: int = 0) -> int:
    """`torchrun --standalone --nproc-per-node nproc -m trmrl ARGV...`, started from here through
    torch's elastic launcher (the same agent torchrun runs): nproc processes on this machine,
    `threads` torch threads each (0: this machine's cores / nproc). Returns the exit code: a
    process's own error is its one line; a process killed from outside is named here."""
    import logging
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    os.environ["OMP_NUM_THREADS"] = str(threads or max(1, (os.cpu_count() or 1) // nproc))
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # failures are reported below
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1)
    try:
        elastic_launch(config, sys.executable)("-m", "trmrl", *argv)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        if failure.exitcode > 0:
            return failure.exitcode  # the process printed its own error line
        raise DistributedError(f"process {rank} of {nproc} was stopped by signal {failure.signal_name()}; "
                               f"the others were stopped with it") from None
    return 0


def _first_line(exc: BaseException) -> str:
    """The message of a c10d/gloo error: its first line, without the source location and advice."""
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    line = re.sub(r"^\[[^\]]*\.(cpp|cc):\d+\] ", "", line)
    return line.split(" This is typically caused")[0]


def _collective(op: Callable[[], T], what: str, part: str = "other") -> T:
    """Run one collective, its time counted to `part` of the epoch; a peer that died or cannot be
    reached (gloo's closed connection, a timeout) becomes one DistributedError line."""
    start = time.perf_counter()
    try:
        return op()
    except RuntimeError as exc:
        raise DistributedError(f"lost the run's other processes during {what}: one stopped or cannot be reached "
                               f"({_first_line(exc)})") from None
    finally:
        _communication_seconds[part] = _communication_seconds.get(part, 0.0) + time.perf_counter() - start


def communication_seconds() -> dict[str, float]:
    """Seconds this process spent in collectives since the last call (waiting for the slowest
    process included), by part of the epoch: `sampling` (gathering rollouts), `update` (the
    gradient all-reduces), `other`."""
    spent = dict(_communication_seconds)
    _communication_seconds.clear()
    return spent


def _backend_device() -> torch.device:
    """Where collectives take their tensors: gloo the CPU, NCCL the GPU."""
    return _world.device if _world.device.type == "cuda" else torch.device("cpu")


# -- tasks and rollouts ------------------------------------------------------------------------

def share(n: int) -> range:
    """The indices of the n items (an epoch's tasks, a meta-test's tasks) this rank takes: those
    equal to its rank mod N."""
    return range(_world.rank, n, _world.size)


def share_size(n: int) -> int:
    """The largest share of n items over the ranks (envs a rank's sampler needs)."""
    return -(-n // _world.size)


def gather_columns(x: Tensor, n: int, dim: int = 1) -> Tensor:
    """Each rank's columns along `dim` (its `share(n)` of n, in order) -> all n columns in index
    order, on every rank. Unequal shares are padded for the all-gather and trimmed after."""
    if _world.size == 1:
        return x
    width = share_size(n)
    sent = x.to(_backend_device(), torch.uint8 if x.dtype == torch.bool else x.dtype)
    if sent.shape[dim] < width:
        pad = list(sent.shape)
        pad[dim] = width - sent.shape[dim]
        sent = torch.cat([sent, sent.new_zeros(pad)], dim=dim)
    parts = [torch.empty_like(sent) for _ in range(_world.size)]
    _collective(lambda: dist.all_gather(parts, sent.contiguous()), "the gathering of the rollouts", "sampling")
    # parts[r][..., i, ...] is column i * N + r: stack the ranks next to `dim`, then merge
    merged = torch.stack(parts, dim=dim + 1).flatten(dim, dim + 1).narrow(dim, 0, n)
    return merged.to(x.device, x.dtype)


def collect(
    sampler: TrialSampler, policy: Policy[Any], tasks: Sequence[Task], env_seeds: Sequence[int],
    generators: Sequence[torch.Generator] | None, deterministic: bool = False,
) -> Rollout:
    """`sampler.collect` of this rank's share of `tasks` (each with its own reset seed and
    action stream), gathered: every rank returns the rollout of all `tasks` in their order,
    equal to what one process collects."""
    if _world.size == 1:
        return sampler.collect(policy, tasks, env_seeds, generators, deterministic)
    mine = share(len(tasks))  # empty where there are fewer tasks than processes
    part = sampler.collect(policy, [tasks[i] for i in mine], [env_seeds[i] for i in mine],
                           None if generators is None else [generators[i] for i in mine], deterministic)
    gathered = {f.name: getattr(part, f.name) for f in dataclasses.fields(part)}
    for name, value in gathered.items():
        if value is not None:
            gathered[name] = gather_columns(value, len(tasks), dim=0 if value.dim() == 1 else 1)
    return type(part)(**gathered)


# -- the update ---------------------------------------------------------------------------------

def minibatch_share(index: Tensor) -> Tensor:
    """This rank's rows of a minibatch (every N-th, from its rank)."""
    return index[_world.rank :: _world.size]


def sum_gradients(params: Sequence[Tensor], numbers: Tensor) -> Tensor:
    """Sum the gradients of `params` over the ranks in place, and the numbers (E,) with them in
    the same flat buffer (one all-reduce); returns the summed numbers. A parameter gets a
    gradient if any rank's loss reached it and keeps none otherwise, as in one process (an
    optimiser skips a parameter without a gradient)."""
    like = params[0]
    reached = torch.tensor([p.grad is not None for p in params], dtype=like.dtype, device=like.device)
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
                     + [reached, numbers.to(like)])
    flat = flat.to(_backend_device())
    _collective(lambda: dist.all_reduce(flat), "the gradient all-reduce", "update")
    flat = flat.to(like.device)
    offset = 0
    for p, any_rank in zip(params, flat[-len(numbers) - len(params) : -len(numbers)].tolist()):
        p.grad = flat[offset : offset + p.numel()].view_as(p) if any_rank else None  # a view: no copy
        offset += p.numel()
    return flat[-len(numbers):].cpu()


# -- keeping the ranks together -----------------------------------------------------------------

def any_rank(flag: bool) -> bool:
    """True on every rank if `flag` is true on any (a stop request that reached some processes
    first: all of them stop after the same epoch)."""
    if _world.size == 1:
        return flag
    value = torch.tensor([float(flag)], device=_backend_device())
    _collective(lambda: dist.all_reduce(value, op=dist.ReduceOp.MAX), "the stop check")
    return bool(value.item())


def broadcast(value: T) -> T:
    """Rank 0's `value` (a picklable object), on every rank."""
    if _world.size == 1:
        return value
    box = [value]
    _collective(lambda: dist.broadcast_object_list(box, src=0, device=_backend_device()), "a broadcast")
    return box[0]


def _tensors(state: Any) -> Iterator[Tensor]:
    if isinstance(state, Tensor):
        yield state
    elif isinstance(state, dict):
        for key in sorted(state, key=str):
            yield from _tensors(state[key])
    elif isinstance(state, (list, tuple)):
        for item in state:
            yield from _tensors(item)


def check_identical(state: Any, what: str) -> None:
    """Raise DistributedError unless every rank holds the same tensors in `state` (nested
    dicts/lists, e.g. a state_dict): compared through a float64 fingerprint per tensor."""
    if _world.size == 1:
        return
    fingerprint = torch.stack([torch.stack([t.detach().double().sum(), t.detach().double().abs().sum()])
                               for t in _tensors(state) if t.numel()]).flatten().to(_backend_device())
    parts = [torch.empty_like(fingerprint) for _ in range(_world.size)]
    _collective(lambda: dist.all_gather(parts, fingerprint), "a consistency check")
    for rank, part in enumerate(parts):
        if not torch.equal(part, parts[0]):
            raise DistributedError(f"process {rank} holds different {what} from process 0; the processes "
                                   f"must run the same code, config and checkpoint")
