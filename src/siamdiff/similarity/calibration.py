"""Turning an embedding distance into a probability of "same category", fitted on validation pairs."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Calibration:
    """``p(same | d) = sigmoid(intercept + slope · d)`` and the decision threshold on ``d`` chosen on validation."""

    intercept: float
    slope: float
    threshold: float

    def __post_init__(self) -> None:
        if not all(np.isfinite([self.intercept, self.slope, self.threshold])):  # NaN would print as invalid JSON
            raise ValueError(f"a calibration of numbers that are not all finite: {self}")

    def probability(self, d: np.ndarray | float) -> np.ndarray:
        z = self.intercept + self.slope * np.asarray(d, dtype=np.float64)
        return 0.5 * (1.0 + np.tanh(0.5 * z))  # a sigmoid that never overflows

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        return cls(float(d["intercept"]), float(d["slope"]), float(d["threshold"]))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, iters: int = 100) -> tuple[float, float]:
    """One-feature logistic regression by Newton's method with a tiny fixed ridge on the standardised slope.

    The ridge (a constant, not growing with the number of pairs) only matters when validation pairs are perfectly
    separable, where it keeps the fit finite; otherwise the fit is the maximum-likelihood one.
    Returns ``(intercept, slope)``.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    scale = x.std() or 1.0
    xs = (x - x.mean()) / scale
    w = np.zeros(2)
    design = np.stack([np.ones_like(xs), xs], axis=1)
    penalty = np.diag([0.0, l2])
    for _ in range(iters * 5):
        p = 0.5 * (1.0 + np.tanh(0.5 * design @ w))
        grad = design.T @ (p - y) + penalty @ w
        hess = design.T @ (design * (p * (1 - p))[:, None]) + penalty + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    slope = w[1] / scale
    return float(w[0] - slope * x.mean()), float(slope)


def calibrate(distances: np.ndarray, same: np.ndarray) -> Calibration:
    """Fit the probability and pick the accuracy-maximising distance threshold on validation pairs."""
    from .metrics import best_threshold

    intercept, slope = fit_logistic(distances, same)
    threshold = -best_threshold(-np.asarray(distances, dtype=np.float64), np.asarray(same).astype(bool))
    return Calibration(intercept, slope, threshold)
