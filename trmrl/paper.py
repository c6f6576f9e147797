"""The paper's TrMRL figures, for plots and tables that put a run beside them.

Values were read from the vector data of the paper's plots (Melo, ICML 2022, arXiv 2206.06614;
it has no numeric tables), so treat them as about; see TRMRL.md section 6. Curves are means over
the paper's 3 seeds; x is environment steps (learning curves) or the episode index within a trial
(fast adaptation).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reference:
    """Points of one of the paper's curves."""

    label: str
    x: tuple[float, ...]
    y: tuple[float, ...]

    def at(self, x: float) -> float | None:
        """The paper's value at exactly `x`, if it reports one there."""
        return dict(zip(self.x, self.y)).get(x)


LEARNING: dict[str, tuple[Reference, ...]] = {
    # Fig. 4: meta-test return or success of TrMRL; appendix E: the T-Fixup ablation (the paper's
    # configuration there reads -93 at 2e6 where Fig. 4 reads -70)
    "cheetah-vel": (
        Reference("TrMRL (Fig. 4)", (2e6, 4e6, 1e7), (-70.0, -34.0, -25.0)),
        Reference("without T-Fixup (app. E)", (2e6, 4e6, 1e7), (-268.0, -212.0, -190.0)),
    ),
    "ant-dir": (Reference("TrMRL (Fig. 4)", (4e6, 8e6, 2e7), (310.0, 680.0, 1090.0)),),
}
"""Preset -> the paper's learning-curve points (meta-test return) for it."""

LEARNING_SUCCESS: dict[str, tuple[Reference, ...]] = {
    # Fig. 4, MetaWorld v2 (this library runs metaworld 3.x's v3 tasks: same protocol, other
    # simulation); the paper's ML45 curve is on ML45's training tasks
    "ml1-reach": (Reference("TrMRL, ML1-Reach-v2 (Fig. 4)", (2.2e6, 4.3e6), (0.88, 0.98)),),
    "ml1-push": (Reference("TrMRL, ML1-Push-v2 (Fig. 4)", (1e7, 2e7, 5e7), (0.41, 0.61, 0.78)),),
    "ml45": (Reference("TrMRL, ML45 train tasks (Fig. 4)", (1e7, 5e7), (0.27, 0.34)),),
}
"""Preset -> the paper's learning-curve points (meta-test success rate) for it."""

ADAPTATION: dict[tuple[str, str], Reference] = {
    # Fig. 5: 20 test tasks, one trial of 6 episodes (the paper gives the first and last)
    ("cheetah-vel", "adaptation"): Reference("TrMRL (Fig. 5)", (0, 5), (-27.5, -26.8)),
    ("ant-dir", "adaptation"): Reference("TrMRL (Fig. 5)", (0, 5), (1130.0, 1160.0)),
    # Fig. 6: HalfCheetahVel with target velocity U[3, 4], 20 tasks x 6 episodes
    ("cheetah-vel", "ood"): Reference("TrMRL (Fig. 6)", (0, 1, 2, 3, 4, 5),
                                      (-100.0, -125.0, -114.0, -99.0, -134.0, -106.0)),
}
"""(preset, evaluation protocol) -> the paper's return per episode index."""


def learning_references(preset: str | None, metric: str = "return") -> tuple[Reference, ...]:
    return (LEARNING if metric == "return" else LEARNING_SUCCESS).get(preset or "", ())


def adaptation_reference(preset: str | None, protocol: str) -> Reference | None:
    return ADAPTATION.get((preset or "", protocol))
