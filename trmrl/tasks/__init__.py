"""Task distributions by name."""

from __future__ import annotations

from trmrl.errors import ConfigError, MissingDependencyError
from trmrl.tasks.base import Task, TaskDistribution, TaskEnv

__all__ = ["Task", "TaskDistribution", "TaskEnv", "TASK_NAMES", "make_task_distribution"]

TASK_NAMES = ("point-nav", "point-nav-xy", "cheetah-vel", "cheetah-vel-ood", "cheetah-dir", "ant-dir")


def make_task_distribution(name: str) -> TaskDistribution:
    """The distribution called `name`; MuJoCo is imported only when a MuJoCo task is asked for."""
    if name in ("point-nav", "point-nav-xy"):
        from trmrl.tasks.toy import PointNav

        return PointNav(observe_position=name == "point-nav-xy")
    if name not in TASK_NAMES:
        raise ConfigError(f"unknown task '{name}'; choose from {', '.join(TASK_NAMES)}")
    try:
        from trmrl.tasks import mujoco as mj
    except ImportError as exc:
        raise MissingDependencyError(f"task '{name}' needs MuJoCo: pip install 'gymnasium[mujoco]' ({exc})") from exc

    if name == "cheetah-vel":
        return mj.CheetahVel(0.0, 3.0)
    if name == "cheetah-vel-ood":
        return mj.CheetahVel(3.0, 4.0, name="cheetah-vel-ood")
    if name == "cheetah-dir":
        return mj.cheetah_dir()
    return mj.ant_dir()
