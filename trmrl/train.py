"""Meta-training, the same loop for every algorithm: sample training tasks -> one iteration of
the algorithm (collect, build its batch, update) -> log -> meta-test -> checkpoint.

In a run of several processes (`trmrl.distributed`) every process runs this loop on the same
tasks; the algorithm splits the collection and the update between them, and rank 0 alone logs,
shows progress and writes checkpoints."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import torch

from trmrl import checkpoint, distributed
from trmrl.algos import load_config, make_algorithm, read_run_config
from trmrl.config import TrainConfig, to_dict
from trmrl.errors import CheckpointError, ConfigError, DistributedError, DivergenceError, Interrupted
from trmrl.evaluate import MetaTester, during_training, final_meta_test, resolve_protocol
from trmrl.log import MetricLogger
from trmrl.progress import Progress
from trmrl.protocols import Algorithm, TaskPool
from trmrl.rundir import RunDir
from trmrl.seeding import Stream, numpy_rng
from trmrl.tasks import make_task_distribution


class StopRequests:
    """While training, SIGTERM (a batch scheduler's preemption) and SIGINT (Ctrl-C) ask the run to
    stop at the end of the current epoch, after a checkpoint, rather than lose the epochs since the
    last one; a second SIGINT stops at once. Only the main thread can take signals: elsewhere
    (a run inside another program's thread) they keep their usual effect."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._ask) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _ask(self, signum: int, frame: object) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name


def train(config: TrainConfig, run_dir: Path, *, resume: bool = False, max_epochs: int | None = None) -> dict[str, Any]:
    """Meta-train into `run_dir` (continuing its checkpoint if `resume`); `max_epochs` stops
    early, as an interruption would. Returns the final meta-test summary (if training ended)."""
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    for name in config.eval.also:  # a protocol's name is checked before anything is written
        resolve_protocol(name, config.task.name)
    run = RunDir(run_dir)
    main = distributed.is_main()
    distribution = make_task_distribution(config.task.name, **config.task_options())
    check_data_parallel(config, distributed.world().size)
    algorithm = make_algorithm(config, distribution)
    start = 0
    if resume:
        state = checkpoint.load(run.checkpoint)
        check_same_algorithm(state, config.algo, run.checkpoint)
        start = int(state["epoch"])
        if start > config.n_epochs:  # a shorter budget would cut the curve and re-test the agent at a step it passed
            raise ConfigError(f"{run.checkpoint} holds {config.env_steps_after(start)} env steps of training, more "
                              f"than --total-env-steps {config.total_env_steps}: a resume continues a run, it cannot "
                              f"shorten it (test the agent as it is with `trmrl eval {run_dir}`)")
        algorithm.load_state_dict(state)
        if main:
            run.remove_partial_checkpoints()
    elif main:
        run.create(config)
    # the same seed (or checkpoint) gives every process the same start: checked, not assumed
    distributed.check_identical(algorithm.state_dict(), "parameters or optimiser states")
    logger = (MetricLogger(run, completed_epochs=start if resume else None, hparams=to_dict(config), track=config.track)
              if main else None)
    e = config.eval
    tester = MetaTester(distribution, during_training(e.n_tasks, e.episodes, e.deterministic),
                        config.task.max_episode_steps, e.seed, config.task.vector_env)
    # the run's other protocols (`eval.also`), as they are defined, on the tasks `eval.same_tasks` says
    also = {name: MetaTester(distribution, resolve_protocol(name, config.task.name), config.task.max_episode_steps,
                             e.seed, config.task.vector_env) for name in e.also}
    end = config.n_epochs if max_epochs is None else min(config.n_epochs, start + max_epochs)
    steps_after = config.env_steps_after
    progress = Progress(config.preset, start, end, steps_after(start), steps_after(config.n_epochs),
                        enabled=config.progress and main)

    def meta_test(epoch: int) -> None:
        """The during-training protocol on the agent that has seen `epoch` epochs, logged at the
        env steps it had seen (before epoch `epoch` samples)."""
        index = 0 if e.same_tasks else epoch
        metrics = tester.run(algorithm.meta_learner(), index=index).metrics()
        for name, other in also.items():
            metrics |= other.run(algorithm.meta_learner(), index=index).summary_metrics(f"meta_test/{name}")
        if logger:
            logger.log(epoch, steps_after(epoch), metrics)
        progress.meta_test(steps_after(epoch), metrics)

    epoch = start
    with StopRequests() as requests:
        try:
            for epoch in range(start, end):
                if e.every_epochs and epoch % e.every_epochs == 0:
                    meta_test(epoch)
                if isinstance(algorithm, TaskPool):
                    tasks = algorithm.epoch_tasks(epoch)
                else:
                    rng = numpy_rng(config.seed, Stream.TRAIN_TASKS, epoch)
                    tasks = distribution.sample(rng, config.task.tasks_per_epoch, "train")
                metrics = algorithm.train_iteration(tasks, epoch)
                if distributed.world().size > 1:  # seconds of the epoch's sampling and update spent in collectives
                    spent = distributed.communication_seconds()
                    metrics |= {f"time/communication_{part}": spent.get(part, 0.0) for part in ("sampling", "update")}
                if logger:
                    logger.log(epoch, steps_after(epoch + 1), metrics)
                stop = distributed.any_rank(requests.signal is not None)
                if (epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == end or stop:
                    state = algorithm.state_dict()
                    distributed.check_identical(state, "parameters or optimiser states")
                    if logger:
                        logger.flush()
                        checkpoint.save(run.checkpoint, {"epoch": epoch + 1, "env_steps": steps_after(epoch + 1),
                                                         "config": to_dict(config), **state})
                progress.epoch(epoch, steps_after(epoch + 1), metrics)
                if stop:
                    raise Interrupted(requests.signal or "another process's signal", epoch + 1, run.root)
            if end == config.n_epochs and e.every_epochs:
                meta_test(end)  # the learning curve ends at the budget
        except (DivergenceError, DistributedError) as exc:
            kept = (f"last good checkpoint kept at {run.checkpoint}" if run.checkpoint.exists()
                    else "no checkpoint was written yet")
            raise type(exc)(f"training stopped at epoch {epoch}: {exc}; {kept}") from exc
        finally:
            progress.close()
            if logger:
                logger.close()
            for t in (tester, *also.values()):
                t.close()
    if end < config.n_epochs or not e.final:
        return {}
    return final_meta_test(config, algorithm.meta_learner(), distribution, run.eval)


def check_data_parallel(config: TrainConfig, n: int) -> None:
    """For a run of n processes: an algorithm that splits its work between them, and an epoch's
    tasks they divide (equal shares keep the processes in step)."""
    from trmrl.algos import algorithm_class

    if n == 1:
        return
    if not algorithm_class(config.algo).data_parallel:
        raise ConfigError(f"'{config.algo}' trains in one process; several processes run "
                          f"{', '.join(data_parallel_algorithms())}")
    if config.task.tasks_per_epoch % n:
        raise ConfigError(f"task.tasks_per_epoch ({config.task.tasks_per_epoch}) must be a multiple of the number "
                          f"of processes ({n}): equal shares keep them in step")


def data_parallel_algorithms() -> list[str]:
    """The algorithms whose iteration splits over processes (`trmrl.distributed`)."""
    from trmrl.algos import ALGORITHMS, algorithm_class

    return [name for name in ALGORITHMS if algorithm_class(name).data_parallel]


def check_same_algorithm(state: dict[str, Any], algo: str, file: Path) -> None:
    """A checkpoint holds the agent of the algorithm its run was made with (one copied from another
    run would otherwise load halfway or be tested under the wrong name)."""
    written_by = state.get("config", {}).get("algo", algo)
    if written_by != algo:
        raise CheckpointError(f"{file} holds a '{written_by}' agent but its run directory is a '{algo}' run "
                              f"(config.json); a checkpoint belongs to the run that wrote it")


def load_trained(path: Path) -> tuple[TrainConfig, Algorithm, RunDir]:
    """(config, algorithm with its trained state, run directory) from a run directory or a
    checkpoint file in one."""
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    file = path if path.is_file() else RunDir(path).checkpoint
    state = checkpoint.load(file)
    try:
        config = load_config(state["config"])
    except (KeyError, TypeError, ConfigError) as exc:
        raise CheckpointError(f"{file} holds an incompatible config: {exc}") from None
    run = RunDir(file.parent)
    if run.config.is_file():  # results go to this run directory: they must be of its algorithm
        check_same_algorithm(state, read_run_config(run.root).algo, file)
    algorithm = make_algorithm(config, make_task_distribution(config.task.name, **config.task_options()))
    algorithm.load_state_dict(state)
    return config, algorithm, run
