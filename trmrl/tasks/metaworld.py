"""MetaWorld's meta-learning benchmarks (ML1, ML10, ML45) through Farama's `metaworld` 3.x.

Only the benchmark classes are used (`metaworld.ML1(name, seed=s)`, `ML10(seed=s)`,
`ML45(seed=s)`): metaworld 3.1's gymnasium registrations build ML1's test goals for training,
assert unless the env count divides the task count, and have no `gym.make` entry for ML1.

A task is one MetaWorld goal of one class (`Task.name` = class, e.g. 'reach-v3'; `params` = the
goal's random vector, object and goal positions; `payload` = metaworld's own task). Training
draws the benchmark's train goals, meta-tests its test goals (ML1: 50 held-out goals of the same
class; ML10/ML45: the 5 held-out classes). The goal is hidden from the observation (39-d) and an
episode succeeds if the env reports `info["success"]` at any of its steps; `trmrl` counts that
itself, per env and episode, rather than with `metaworld.evaluation` (whose 3.1.1 helper counts
the first episodes per class name, so a fast sub-env fills the slots of the others).
"""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np

from trmrl.errors import ConfigError, MissingDependencyError
from trmrl.tasks.base import Split, Task

RewardVersion = Literal["v1", "v2"]
RememberedAction = Literal["applied", "sampled"]
MUJOCO = "3.3.0"
"""The MuJoCo release metaworld 3.1 pins; another one changes (or breaks) its tasks."""
ENVS_PER_CLASS_CACHE = 1
"""Simulators one env keeps alive for the classes it played last. One simulator holds about
27 MB and builds in about 0.13 s (ML10 classes, measured), so rebuilding on a class change costs
little beside a 500-step episode, while four per env took an ML10 run's final protocol (50
envs) past 8 GB."""


def require_metaworld() -> Any:
    """The `metaworld` module, or a one-line error that says what to install."""
    try:
        import metaworld
    except ImportError as exc:
        raise MissingDependencyError(f"MetaWorld tasks need the extra: pip install 'trmrl[metaworld]' ({exc})") from None
    found = metadata.version("mujoco")
    if found != MUJOCO:
        raise MissingDependencyError(f"metaworld {metadata.version('metaworld')} needs mujoco=={MUJOCO}, found {found}: "
                                     f"pip install mujoco=={MUJOCO}")
    return metaworld


def ml1_names() -> list[str]:
    """Every MetaWorld class ML1 accepts ('reach-v3', 'push-v3', ...)."""
    return list(require_metaworld().ML1.ENV_NAMES)


def _cache_dir() -> Path:
    root = os.environ.get("TRMRL_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "trmrl"
    return Path(root) / "metaworld"


@lru_cache(maxsize=8)
def _benchmark(kind: str, seed: int) -> tuple[OrderedDict[str, type], OrderedDict[str, type], list[Any], list[Any]]:
    """(train classes, test classes, train tasks, test tasks) of benchmark `kind` ('ML1:<class>',
    'ML10', 'ML45', 'CustomML:<train,...>|<test,...>') built with `seed`. Building samples 50 goals per class by resetting its
    simulator (ML45: tens of seconds), so the result is kept in memory and on disk (keyed by the
    metaworld version); the disk copy is only a cache, rebuilt when unreadable."""
    metaworld = require_metaworld()
    path = _cache_dir() / f"{kind.replace(':', '-')}-seed{seed}-metaworld{metadata.version('metaworld')}.pkl"
    try:
        with path.open("rb") as f:
            return pickle.load(f)
    except (OSError, pickle.PickleError, EOFError, AttributeError, ImportError):
        pass
    if kind.startswith("ML1:"):
        bench = metaworld.ML1(kind[4:], seed=seed)
    elif kind.startswith("CustomML:"):
        train, test = kind[9:].split("|")
        bench = metaworld.CustomML(train.split(","), test.split(","), seed=seed)
    else:
        bench = getattr(metaworld, kind)(seed=seed)
    built = (OrderedDict(bench.train_classes), OrderedDict(bench.test_classes), list(bench.train_tasks),
             list(bench.test_tasks))
    try:  # atomically, so that parallel runs never read half a file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with tmp.open("wb") as f:
            pickle.dump(built, f)
        tmp.replace(path)
    except OSError:
        pass
    return built


class MetaWorldTaskEnv(gym.Env[np.ndarray, np.ndarray]):
    """Plays any task of a benchmark: `set_task` switches to the task's class (building its
    simulator, unless it is one of the last `ENVS_PER_CLASS_CACHE` played) and goal. Observation (39,): hand, gripper, two objects, the
    previous frame and a zeroed goal; action (4,) in [-1, 1]. No time limit here (the trial env
    applies the episode length); reward of `reward_function_version`; never terminates."""

    metadata = {"render_modes": []}

    def __init__(self, classes: dict[str, type], reward_function_version: RewardVersion = "v2",
                 remembered_action: RememberedAction = "applied") -> None:
        self._classes = classes
        self._reward_function_version = reward_function_version
        self._remembered_action = remembered_action
        self._envs: OrderedDict[str, Any] = OrderedDict()
        self._env: Any = None
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(39,), dtype=np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)

    def _simulator(self, name: str) -> Any:
        if name in self._envs:
            self._envs.move_to_end(name)
            return self._envs[name]
        env = self._classes[name](reward_function_version=self._reward_function_version)
        env.max_path_length = np.iinfo(np.int64).max  # the trial env owns the time limit
        self._envs[name] = env
        if len(self._envs) > ENVS_PER_CLASS_CACHE:
            self._envs.popitem(last=False)[1].close()
        return env

    def set_task(self, task: Task) -> None:
        self._env = self._simulator(task.name)
        self._env.set_task(task.payload)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        # A MetaWorld task fixes the object and goal positions, so a reset is deterministic.
        super().reset(seed=seed)
        if self._env is None:
            raise ValueError("set_task before reset")
        obs, info = self._env.reset()
        return obs, info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, _, _, info = self._env.step(np.asarray(action, dtype=np.float32))
        info = dict(info, success=bool(info["success"]))
        if self._remembered_action == "applied":  # metaworld clips the action itself: remember what it applied
            info["applied_action"] = np.clip(action, -1.0, 1.0)
        return obs, float(reward), False, False, info

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()


class MetaWorldBenchmark:
    """ML1 (one class: train and test goals differ), ML10 or ML45 (train and test classes
    differ), built from `seed`. Tasks are drawn round-robin over the split's classes in a
    shuffled order, each class's goals without replacement, so a batch whose size is a multiple
    of the class count holds every class equally (garage's MetaWorldTaskSampler)."""

    held_out = True
    reports_success = True

    def __init__(self, kind: str, name: str, seed: int = 0, reward_function_version: RewardVersion = "v2",
                 remembered_action: RememberedAction = "applied") -> None:
        require_metaworld()
        if reward_function_version not in ("v1", "v2"):
            raise ConfigError(f"task.reward_function_version must be 'v1' or 'v2', not '{reward_function_version}'")
        if remembered_action not in ("applied", "sampled"):
            raise ConfigError(f"task.remembered_action must be 'applied' or 'sampled', not '{remembered_action}'")
        self.kind, self.name, self.seed = kind, name, seed
        self.reward_function_version = reward_function_version
        self.remembered_action = remembered_action

    def _built(self) -> tuple[OrderedDict[str, type], OrderedDict[str, type], list[Any], list[Any]]:
        return _benchmark(self.kind, self.seed)

    def tasks(self, split: Split) -> list[Task]:
        """Every task of `split`, class by class, goals in the benchmark's order."""
        return list(_tasks(self.kind, self.seed, split))

    def sample(self, rng: np.random.Generator, n: int, split: Split) -> Sequence[Task]:
        by_class: dict[str, list[Task]] = {}
        for task in self.tasks(split):
            by_class.setdefault(task.name, []).append(task)
        names = list(by_class)
        order = [names[i] for i in rng.permutation(len(names))]
        slots = [order[i % len(order)] for i in range(n)]  # the class of each of the n tasks
        drawn: dict[str, Iterator[Task]] = {}
        for name in names:  # a fixed class order, so the draws depend on the seed alone
            goals, k = by_class[name], slots.count(name)
            index = np.concatenate([rng.permutation(len(goals)) for _ in range(-(-k // len(goals)))]) if k else []
            drawn[name] = iter([goals[j] for j in index])
        return [next(drawn[name]) for name in slots]

    def make_env(self) -> MetaWorldTaskEnv:
        train, test, _, _ = self._built()
        return MetaWorldTaskEnv({**train, **test}, self.reward_function_version, self.remembered_action)


@lru_cache(maxsize=16)
def _tasks(kind: str, seed: int, split: Split) -> tuple[Task, ...]:
    """The benchmark's tasks of `split` as `Task`s (the goal's random vector unpickled once)."""
    _, _, train, test = _benchmark(kind, seed)
    return tuple(Task(t.env_name, tuple(float(x) for x in pickle.loads(t.data)["rand_vec"]), t)
                 for t in (train if split == "train" else test))


def ml1(name: str, seed: int = 0, reward_function_version: RewardVersion = "v2",
        remembered_action: RememberedAction = "applied") -> MetaWorldBenchmark:
    """ML1 on class `name` (e.g. 'reach-v3'): 50 train goals, 50 held-out test goals."""
    names = ml1_names()
    if name not in names:
        raise ConfigError(f"unknown MetaWorld class '{name}' for ml1/; choose from {', '.join(names)}")
    return MetaWorldBenchmark(f"ML1:{name}", f"ml1/{name}", seed, reward_function_version, remembered_action)


def ml10(seed: int = 0, reward_function_version: RewardVersion = "v2",
         remembered_action: RememberedAction = "applied") -> MetaWorldBenchmark:
    """ML10: 10 train classes, 5 held-out test classes, 50 goals each."""
    return MetaWorldBenchmark("ML10", "ml10", seed, reward_function_version, remembered_action)


def ml45(seed: int = 0, reward_function_version: RewardVersion = "v2",
         remembered_action: RememberedAction = "applied") -> MetaWorldBenchmark:
    """ML45: 45 train classes, 5 held-out test classes, 50 goals each."""
    return MetaWorldBenchmark("ML45", "ml45", seed, reward_function_version, remembered_action)


def custom(train: Sequence[str], test: Sequence[str], seed: int = 0,
           reward_function_version: RewardVersion = "v2", remembered_action: RememberedAction = "applied"
           ) -> MetaWorldBenchmark:
    """Train on classes `train`, meta-test on the held-out classes `test` (metaworld.CustomML;
    its goals differ from ML10's or ML45's for the same classes and seed)."""
    names = set(ml1_names())
    unknown = sorted((set(train) | set(test)) - names)
    if unknown or not train or not test or set(train) & set(test):
        raise ConfigError(f"a custom MetaWorld benchmark needs known, disjoint, non-empty train and test classes "
                          f"(unknown: {unknown})")
    kind = f"CustomML:{','.join(train)}|{','.join(test)}"
    return MetaWorldBenchmark(kind, f"metaworld:{'+'.join(train)}/{'+'.join(test)}", seed, reward_function_version,
                              remembered_action)
