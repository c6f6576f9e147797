"""The paper's figures (TrMRL and the baselines it compares with), for plots and tables that put
a run beside them.

Values were read from the vector data of the paper's plots (Melo, ICML 2022, arXiv 2206.06614;
it has no numeric tables), so treat them as about; see docs/paper.md section 5. Curves are means over
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


LEARNING: dict[tuple[str, str], tuple[Reference, ...]] = {
    # Fig. 4: TrMRL's return per episode; appendix E: the T-Fixup ablation (the paper's
    # configuration there reads -93 at 2e6 where Fig. 4 reads -70); the baselines' points are
    # where their curves end in Fig. 4. The author's MuJoCo launchers ran no meta-evaluator, so
    # the TrMRL MuJoCo curves are most likely the training return (garage's Average/AverageReturn:
    # the epoch's episodes, sampled actions; docs/cheetah-vel.md)
    ("cheetah-vel", "trmrl"): (
        Reference("TrMRL (Fig. 4; training return)", (2e6, 4e6, 1e7), (-70.0, -34.0, -25.0)),
        Reference("without T-Fixup (app. E; training return)", (2e6, 4e6, 1e7), (-268.0, -212.0, -190.0)),
    ),
    ("cheetah-vel", "rl2"): (Reference("RL2-PPO (Fig. 4)", (4e7,), (-33.0,)),),
    ("cheetah-vel", "maml"): (Reference("MAML-TRPO (Fig. 4)", (5e7,), (-196.0,)),),
    ("cheetah-vel", "pearl"): (Reference("PEARL (Fig. 4)", (1e6,), (-29.0,)),),
    ("ant-dir", "trmrl"): (Reference("TrMRL (Fig. 4; training return)", (4e6, 8e6, 2e7), (310.0, 680.0, 1090.0)),),
    ("ant-dir", "rl2"): (Reference("RL2-PPO (Fig. 4)", (4e7,), (711.0,)),),
    ("ant-dir", "maml"): (Reference("MAML-TRPO (Fig. 4)", (5e7,), (73.0,)),),
    ("ant-dir", "pearl"): (Reference("PEARL (Fig. 4)", (3.2e6,), (735.0,)),),
}
"""(preset, algorithm) -> the paper's learning-curve points (meta-test return) for it."""

LEARNING_SUCCESS: dict[tuple[str, str], tuple[Reference, ...]] = {
    # Fig. 4, MetaWorld v2 (this library runs metaworld 3.x's v3 tasks: same protocol, other
    # simulation); the paper's ML45 curve is on ML45's training tasks; ML1's may be held-out or
    # training success (the author's plotting script has both), both sampled actions, an episode
    # succeeding at any step: compare with the 'paper-metaworld' and training curves
    ("ml1-reach", "trmrl"): (Reference("TrMRL, ML1-Reach-v2 (Fig. 4)", (2.2e6, 4.3e6), (0.88, 0.98)),),
    ("ml1-reach", "rl2"): (Reference("RL2-PPO, ML1-Reach-v2 (Fig. 4)", (2e7, 5e7), (0.58, 0.99)),),
    ("ml1-reach", "maml"): (Reference("MAML-TRPO, ML1-Reach-v2 (Fig. 4)", (2.5e7,), (0.98,)),),
    ("ml1-reach", "pearl"): (Reference("PEARL, ML1-Reach-v2 (Fig. 4)", (4.8e7,), (0.21,)),),
    ("ml1-push", "trmrl"): (Reference("TrMRL, ML1-Push-v2 (Fig. 4)", (1e7, 2e7, 5e7), (0.41, 0.61, 0.78)),),
    ("ml45", "trmrl"): (Reference("TrMRL, ML45 train tasks (Fig. 4)", (1e7, 5e7), (0.27, 0.34)),),
}
"""(preset, algorithm) -> the paper's learning-curve points (meta-test success rate) for it."""

ADAPTATION: dict[tuple[str, str, str], Reference] = {
    # Fig. 5: 20 test tasks, one trial of 6 episodes (the paper gives the first and last)
    ("cheetah-vel", "adaptation", "trmrl"): Reference("TrMRL (Fig. 5)", (0, 5), (-27.5, -26.8)),
    ("cheetah-vel", "adaptation", "rl2"): Reference("RL2-PPO (Fig. 5)", (0, 5), (-28.0, -28.0)),
    ("cheetah-vel", "adaptation", "maml"): Reference("MAML-TRPO (Fig. 5)", (0, 5), (-167.0, -155.0)),
    # PEARL: two episodes on the prior, then the posterior (the paper gives episodes 0, 1, then about
    # one level for 2-5)
    ("cheetah-vel", "adaptation", "pearl"): Reference("PEARL (Fig. 5)", (0, 1, 2, 5), (-188.0, -187.0, -35.0, -35.0)),
    ("ant-dir", "adaptation", "trmrl"): Reference("TrMRL (Fig. 5)", (0, 5), (1130.0, 1160.0)),
    ("ant-dir", "adaptation", "rl2"): Reference("RL2-PPO (Fig. 5)", (0, 5), (532.0, 595.0)),
    ("ant-dir", "adaptation", "maml"): Reference("MAML-TRPO (Fig. 5)", (0, 5), (184.0, 220.0)),
    ("ant-dir", "adaptation", "pearl"): Reference("PEARL (Fig. 5)", (0, 1, 2, 5), (161.0, 176.0, 860.0, 860.0)),
    # Fig. 6: HalfCheetahVel with target velocity U[3, 4], 20 tasks x 6 episodes
    ("cheetah-vel", "ood", "trmrl"): Reference("TrMRL (Fig. 6)", (0, 1, 2, 3, 4, 5),
                                               (-100.0, -125.0, -114.0, -99.0, -134.0, -106.0)),
    ("cheetah-vel", "ood", "pearl"): Reference("PEARL (Fig. 6)", (0, 2, 3, 5), (-370.0, -370.0, -281.0, -290.0)),
}
"""(preset, evaluation protocol, algorithm) -> the paper's return per episode index."""


def learning_references(preset: str | None, metric: str = "return", algo: str = "trmrl") -> tuple[Reference, ...]:
    return (LEARNING if metric == "return" else LEARNING_SUCCESS).get((preset or "", algo), ())


def adaptation_reference(preset: str | None, protocol: str, algo: str = "trmrl") -> Reference | None:
    return ADAPTATION.get((preset or "", protocol, algo))
