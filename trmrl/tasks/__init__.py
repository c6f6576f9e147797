"""Task distributions by name: one registry that the config, the command line, the evaluator
(out-of-distribution pairs included) and `trmrl presets` all read.

A distribution of your own is one call away from training by name:

    from trmrl import tasks
    tasks.register("my-task", MyDistribution, "one line for `trmrl presets`")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from trmrl.errors import ConfigError, MissingDependencyError
from trmrl.tasks.base import Split, Task, TaskDistribution, TaskEnv

__all__ = ["Split", "Task", "TaskDistribution", "TaskEnv", "Registration", "register", "registered",
           "make_task_distribution", "check_task_name"]


@dataclass(frozen=True)
class Registration:
    name: str
    make: Callable[[], TaskDistribution]
    summary: str
    ood: str | None = None
    """The registered distribution the `ood` meta-test protocol evaluates this one on."""


_REGISTRY: dict[str, Registration] = {}


def register(name: str, make: Callable[[], TaskDistribution], summary: str = "", *, ood: str | None = None,
             replace: bool = False) -> None:
    """Make `make()` available as task distribution `name` (config `task.name`, `--task.name`)."""
    if name in _REGISTRY and not replace:
        raise ConfigError(f"task distribution '{name}' is already registered (pass replace=True to change it)")
    _REGISTRY[name] = Registration(name, make, summary, ood)


def registered() -> dict[str, Registration]:
    """Every registered distribution, by name, in registration order."""
    return dict(_REGISTRY)


def check_task_name(name: str) -> None:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown task '{name}'; choose from {', '.join(_REGISTRY)}")


def make_task_distribution(name: str) -> TaskDistribution:
    """The distribution registered as `name`; its optional dependencies are imported only now."""
    check_task_name(name)
    return _REGISTRY[name].make()


def _mujoco(factory: str, *args: object) -> Callable[[], TaskDistribution]:
    def make() -> TaskDistribution:
        try:
            from trmrl.tasks import mujoco
        except ImportError as exc:
            raise MissingDependencyError(f"this task needs MuJoCo: pip install 'gymnasium[mujoco]' ({exc})") from exc
        return getattr(mujoco, factory)(*args)

    return make


def _point_nav(observe_position: bool) -> Callable[[], TaskDistribution]:
    def make() -> TaskDistribution:
        from trmrl.tasks.toy import PointNav

        return PointNav(observe_position)

    return make


register("point-nav", _point_nav(False), "2-D point, hidden goal on the upper unit half circle; sees only its moves")
register("point-nav-xy", _point_nav(True), "point-nav that also observes its position (memory barely needed)")
register("cheetah-vel", _mujoco("CheetahVel", 0.0, 3.0), "HalfCheetah, target velocity U[0, 3]", ood="cheetah-vel-ood")
register("cheetah-vel-ood", _mujoco("CheetahVel", 3.0, 4.0, "cheetah-vel-ood"),
         "HalfCheetah, target velocity U[3, 4] (out of distribution)")
register("cheetah-dir", _mujoco("cheetah_dir"), "HalfCheetah, direction +-1")
register("ant-dir", _mujoco("ant_dir"), "Ant, direction +-1 rad (the original code's convention)")
