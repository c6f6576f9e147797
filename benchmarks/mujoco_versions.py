"""Do two MuJoCo versions simulate HalfCheetah alike? The same model, start states and actions.

    python benchmarks/mujoco_versions.py save traj-3.3.npy          # the project's mujoco
    /other/venv/bin/python benchmarks/mujoco_versions.py save traj-2.3.npy   # e.g. mujoco==2.3.7
    python benchmarks/mujoco_versions.py compare traj-2.3.npy traj-3.3.npy

`save` needs only mujoco and numpy (install another version in a separate venv: the project pins
mujoco 3.3.0 for metaworld). It runs gymnasium's half_cheetah.xml (the same model as gym 0.17's,
apart from a camera) for 5 episodes of 200 steps of frame skip 5 from the envs' reset noise, with
smooth actions plus Gaussian noise of std 0.2, and saves qpos and qvel after every step. `compare`
prints how far the trajectories drift apart: two engines that integrate the model alike differ by
rounding only, which grows chaotically from about 1e-14.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

MODEL = "half_cheetah.xml"


def save(path: Path) -> None:
    import mujoco

    xml = Path(sys.argv[3]) if len(sys.argv) > 3 else _gymnasium_model()
    model = mujoco.MjModel.from_xml_path(str(xml))
    data = mujoco.MjData(model)
    rng = np.random.default_rng(0)
    states = []
    for _ in range(5):
        mujoco.mj_resetData(model, data)
        data.qpos[:] = model.qpos0 + rng.uniform(-0.1, 0.1, model.nq)
        data.qvel[:] = 0.1 * rng.standard_normal(model.nv)
        mujoco.mj_forward(model, data)
        for t in range(200):
            data.ctrl[:] = 0.5 * np.sin(t / 3 + np.arange(model.nu)) + 0.2 * rng.standard_normal(model.nu)
            mujoco.mj_step(model, data, nstep=5)
            states.append(np.concatenate([data.qpos, data.qvel]))
    np.save(path, np.array(states))
    print(f"mujoco {mujoco.__version__}: wrote {path}")


def _gymnasium_model() -> Path:
    try:
        import gymnasium
    except ImportError:
        raise SystemExit("no gymnasium here: pass the model file as a third argument") from None
    return Path(gymnasium.__file__).parent / "envs" / "mujoco" / "assets" / MODEL


def compare(a: Path, b: Path) -> None:
    x, y = np.load(a), np.load(b)
    gap = np.abs(x - y).max(axis=1).reshape(5, 200)
    print("| step | " + " | ".join(f"episode {i}" for i in range(5)) + " |")
    print("|---|" + "---|" * 5)
    for t in (0, 10, 50, 100, 150, 199):
        print(f"| {t} | " + " | ".join(f"{g:.1e}" for g in gap[:, t]) + " |")
    print("largest |difference| of qpos, qvel after the step; final x:",
          np.round(x.reshape(5, 200, -1)[:, -1, 0], 3), "vs", np.round(y.reshape(5, 200, -1)[:, -1, 0], 3))


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "save":
        save(Path(sys.argv[2]))
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        compare(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        raise SystemExit(__doc__)
