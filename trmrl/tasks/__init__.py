"""Task distributions by name: one registry that the config, the command line, the evaluator
(out-of-distribution pairs included) and `trmrl presets` all read.

A distribution of your own is one call away from training by name:

    from trmrl import tasks
    tasks.register("my-task", MyDistribution, "one line for `trmrl presets`")

A distribution that depends on the run (MetaWorld builds its goals from the run's seed) names
the task options it takes, and `make` receives them as keywords (see `TASK_OPTIONS`).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trmrl.errors import ConfigError, MissingDependencyError
from trmrl.tasks.base import HasOracle, Split, Task, TaskDistribution, TaskEnv, TaskList

__all__ = ["Split", "Task", "TaskDistribution", "TaskEnv", "TaskList", "HasOracle", "Registration", "register", "register_family",
           "registered", "families", "registration", "make_task_distribution", "check_task_name", "TASK_OPTIONS"]

TASK_OPTIONS = ("seed", "reward_function_version", "remembered_action", "goal_radius", "goal_arc", "step_size")
"""What a registration may ask `make` to receive: the run's seed (MetaWorld builds its goals from
it), `task.reward_function_version` and `task.remembered_action` (MetaWorld) and point-nav's `task.goal_radius`,
`task.goal_arc` and `task.step_size`."""


@dataclass(frozen=True)
class Registration:
    name: str
    make: Callable[[], TaskDistribution]
    summary: str
    ood: str | None = None
    """The registered distribution the `ood` meta-test protocol evaluates this one on."""
    options: tuple[str, ...] = ()
    """Task options (of `TASK_OPTIONS`) that `make` takes as keywords."""


_REGISTRY: dict[str, Registration] = {}
_FAMILIES: dict[str, Registration] = {}


def _checked(options: tuple[str, ...]) -> tuple[str, ...]:
    unknown = set(options) - set(TASK_OPTIONS)
    if unknown:
        raise ConfigError(f"unknown task option(s) {sorted(unknown)}; choose from {', '.join(TASK_OPTIONS)}")
    return tuple(options)


def register(name: str, make: Callable[..., TaskDistribution], summary: str = "", *, ood: str | None = None,
             options: tuple[str, ...] = (), replace: bool = False) -> None:
    """Make `make()` available as task distribution `name` (config `task.name`, `--task.name`)."""
    if name in _REGISTRY and not replace:
        raise ConfigError(f"task distribution '{name}' is already registered (pass replace=True to change it)")
    _REGISTRY[name] = Registration(name, make, summary, ood, _checked(options))


def register_family(prefix: str, make: Callable[..., TaskDistribution], summary: str = "", *,
                    options: tuple[str, ...] = ()) -> None:
    """Make every `prefix + name` a task distribution, built by `make(name, **options)` (e.g.
    'ml1/' + any MetaWorld class); `make` rejects a name it does not know."""
    _FAMILIES[prefix] = Registration(prefix + "<name>", make, summary, None, _checked(options))


def registered() -> dict[str, Registration]:
    """Every distribution registered by name, in registration order (families not included)."""
    return dict(_REGISTRY)


def families() -> dict[str, Registration]:
    """Registered families, by prefix."""
    return dict(_FAMILIES)


def registration(name: str) -> Registration:
    """The registration of `name`, a registered name or a family member."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    for prefix, family in _FAMILIES.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            return dataclasses.replace(family, name=name, make=functools.partial(family.make, name[len(prefix):]))
    from trmrl.plugins import load_entry_points

    if load_entry_points():  # a plugin package may register it
        return registration(name)
    known = [*_REGISTRY, *(family.name for family in _FAMILIES.values())]
    raise ConfigError(f"unknown task '{name}'; choose from {', '.join(known)} (a task of your own: "
                      f"--imports MODULE, or a `trmrl.plugins` entry point)")


def check_task_name(name: str) -> None:
    registration(name)


def make_task_distribution(name: str, **options: Any) -> TaskDistribution:
    """The distribution registered as `name`, given the task options it takes (others are
    ignored; missing ones take `make`'s defaults). Optional dependencies are imported only now."""
    entry = registration(name)
    return entry.make(**{k: v for k, v in options.items() if k in entry.options})


def _lazy(module: str, factory: str, *args: Any, needs: str = "") -> Callable[..., TaskDistribution]:
    """`make` for `trmrl.tasks.<module>.<factory>(*args, ...)`, imported on first use, so that a
    missing optional dependency is an error only for the tasks that need it."""

    def make(*more: Any, **options: Any) -> TaskDistribution:
        try:
            found = importlib.import_module(f"trmrl.tasks.{module}")
        except ImportError as exc:
            raise MissingDependencyError(f"this task needs {needs} ({exc})") from exc
        return getattr(found, factory)(*args, *more, **options)

    return make


_MUJOCO = "MuJoCo: pip install 'gymnasium[mujoco]'"
_POINT_NAV = ("goal_radius", "goal_arc", "step_size")
register("point-nav", _lazy("toy", "PointNav", False),
         "2-D point, hidden goal on the upper unit half circle; sees only its moves", options=_POINT_NAV)
register("point-nav-xy", _lazy("toy", "PointNav", True),
         "point-nav that also observes its position (memory barely needed)", options=_POINT_NAV)
register("cheetah-vel", _lazy("mujoco", "CheetahVel", 0.0, 3.0, needs=_MUJOCO), "HalfCheetah, target velocity U[0, 3]",
         ood="cheetah-vel-ood")
register("cheetah-vel-ood", _lazy("mujoco", "CheetahVel", 3.0, 4.0, "cheetah-vel-ood", needs=_MUJOCO),
         "HalfCheetah, target velocity U[3, 4] (out of distribution)")
register("cheetah-dir", _lazy("mujoco", "cheetah_dir", needs=_MUJOCO), "HalfCheetah, direction +-1")
register("ant-dir", _lazy("mujoco", "ant_dir", needs=_MUJOCO), "Ant, direction +-1 rad (the original code's convention)")

# MetaWorld (the `metaworld` extra): goals built from the run's seed.
_MW = ("seed", "reward_function_version", "remembered_action")
for _class in ("reach-v3", "push-v3", "pick-place-v3"):
    register(f"ml1/{_class}", _lazy("metaworld", "ml1", _class),
             f"MetaWorld ML1 {_class}: 50 train goals, 50 held-out goals (pip install 'trmrl[metaworld]')", options=_MW)
register_family("ml1/", _lazy("metaworld", "ml1"), "MetaWorld ML1 on any class, e.g. ml1/door-open-v3", options=_MW)
register("ml10", _lazy("metaworld", "ml10"), "MetaWorld ML10: 10 train classes, 5 held-out classes", options=_MW)
register("ml45", _lazy("metaworld", "ml45"), "MetaWorld ML45: 45 train classes, 5 held-out classes", options=_MW)
