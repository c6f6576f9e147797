"""Aggregate statistics for few-run RL results (Agarwal et al. 2021, "Deep RL at the Edge of
the Statistical Precipice"): mean and interquartile mean with stratified bootstrap confidence
intervals. Scores are (runs, tasks) matrices; a stratum is a task (column): each bootstrap
sample resamples the runs of every task independently."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Statistic = Callable[[np.ndarray], np.ndarray]
"""Maps (n, k) samples -> (n,) values, one per row."""


def mean(samples: np.ndarray) -> np.ndarray:
    return samples.mean(axis=-1)


def iqm(samples: np.ndarray) -> np.ndarray:
    """Interquartile mean: the mean of the middle 50% after sorting; like
    scipy.stats.trim_mean(x, 0.25), floor(n / 4) values are cut at each end."""
    n = samples.shape[-1]
    cut = n // 4
    return np.sort(samples, axis=-1)[..., cut : n - cut].mean(axis=-1)


def stratified_bootstrap_ci(
    scores: np.ndarray, statistic: Statistic, rng: np.random.Generator, n_boot: int = 2000, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile confidence interval of statistic(scores) from `n_boot` stratified resamples."""
    runs, tasks = scores.shape
    rows = rng.integers(0, runs, size=(n_boot, runs, tasks))
    resampled = scores[rows, np.arange(tasks)].reshape(n_boot, runs * tasks)
    values = statistic(resampled)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


@dataclass(frozen=True)
class Aggregate:
    """Point estimates and 95% CIs of one (runs, tasks) score matrix."""

    mean: float
    mean_ci: tuple[float, float]
    iqm: float
    iqm_ci: tuple[float, float]
    n: int

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "mean_ci_low": self.mean_ci[0], "mean_ci_high": self.mean_ci[1],
                "iqm": self.iqm, "iqm_ci_low": self.iqm_ci[0], "iqm_ci_high": self.iqm_ci[1], "n": self.n}


def aggregate(scores: np.ndarray, seed: int = 0, n_boot: int = 2000) -> Aggregate:
    """scores: (runs, tasks); NaN entries (episodes never reached) are dropped per column."""
    scores = np.asarray(scores, dtype=float)
    if scores.ndim == 1:
        scores = scores[:, None]
    if np.isnan(scores).any():
        # keep the runs that reached every task, so the matrix stays rectangular
        scores = scores[~np.isnan(scores).any(axis=1)]
    if scores.size == 0:
        nan = float("nan")
        return Aggregate(nan, (nan, nan), nan, (nan, nan), 0)
    flat = scores.reshape(1, -1)
    rng = np.random.default_rng(seed)
    return Aggregate(
        float(mean(flat)[0]), stratified_bootstrap_ci(scores, mean, rng, n_boot),
        float(iqm(flat)[0]), stratified_bootstrap_ci(scores, iqm, rng, n_boot), int(scores.size),
    )


def probability_of_improvement(x: np.ndarray, y: np.ndarray, seed: int = 0, n_boot: int = 2000
                               ) -> tuple[float, tuple[float, float]]:
    """P(X > Y) (Agarwal et al. 2021): the probability that a run of algorithm X scores above a run
    of Y on a task, ties counting half, averaged over tasks; x (runs_x, tasks), y (runs_y, tasks) on
    the same tasks. With its 95% CI from resampling the runs of each algorithm within each task."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)

    def statistic(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """a (..., n, tasks), b (..., m, tasks) -> (...,)"""
        above = (a[..., :, None, :] > b[..., None, :, :]).mean(axis=(-3, -2))
        ties = (a[..., :, None, :] == b[..., None, :, :]).mean(axis=(-3, -2))
        return (above + 0.5 * ties).mean(axis=-1)

    rng = np.random.default_rng(seed)
    tasks = x.shape[1]
    rx = x[rng.integers(0, len(x), size=(n_boot, len(x), tasks)), np.arange(tasks)]
    ry = y[rng.integers(0, len(y), size=(n_boot, len(y), tasks)), np.arange(tasks)]
    low, high = np.quantile(statistic(rx, ry), [0.025, 0.975])
    return float(statistic(x, y)), (float(low), float(high))
