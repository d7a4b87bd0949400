"""Probe-relative leakage: how well fresh probes tell concept images from matched neutral ones.

For a balanced concept indicator C ∈ {0, 1} and an image's features X, a probe q(C | X) fitted on the other
folds has held-out cross-entropy CE ≥ H(C | X), so (research/score-method.md §3)

    Î_V = max(0, log 2 − CE)          ≤ I(C; X)    (V-usable information, Xu et al. 2020)
    I_Fano = log 2 − h_b(min(err, ½)) ≤ I(C; X)    (err: the probe's held-out error ≥ the Bayes error)
    accuracy of any detector          ≤ ½ + √(I/2) (Pinsker: I = JSD(P₁, P₀) ≥ TV²/2 for balanced C)

Both estimates are lower bounds on I. Reading Î_V as an upper bound assumes the probe family is near-optimal
(I ≤ Î_V + ε_V with ε_V small), which nothing here measures. Probabilities are clipped to [δ, 1 − δ];
intervals are bootstraps over images of the cross-fitted per-image losses.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from score_erasure.evaluation.metrics import DEFAULT_BOOTSTRAP, Interval, bootstrap_interval
from score_erasure.evaluation.protocol import Bootstrap

LOG2 = math.log(2)
INNER_FOLDS = 4  # the logistic probe's inner cross-validation of its L2 strength


def _probes(seed: int) -> dict:
    """Logistic regression with its L2 strength chosen by inner cross-validated log-loss (the workhorse), and a
    one-hidden-layer MLP with strong weight decay (for signals no hyperplane separates). Both are refitted
    inside every outer fold."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return {"logistic": make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=np.logspace(-4, 2, 13).tolist(),
                                                                             cv=INNER_FOLDS, scoring="neg_log_loss",
                                                                             max_iter=2000)),
            "mlp": make_pipeline(StandardScaler(), MLPClassifier((64,), solver="lbfgs", alpha=10.0, max_iter=300,
                                                                 random_state=seed))}


def fewest_images(folds: int) -> int:
    """The fewest images per class the probes can be fitted on: every outer training split must hold
    INNER_FOLDS images of each class for the logistic probe's own cross-validation."""
    return max(2 * folds, math.ceil(INNER_FOLDS * folds / (folds - 1)))


def heldout_probabilities(probe, features: np.ndarray, labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """q(C = label_i | x_i) for every image, from a probe that never saw image i (stratified k-fold)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", FutureWarning)  # LogisticRegressionCV's API notices (sklearn 1.8+)
        proba = cross_val_predict(probe, features, labels, cv=cv, method="predict_proba")
    return proba[np.arange(len(labels)), labels]


def binary_entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return -(p * np.log(p) + (1 - p) * np.log(1 - p))


def _mi(cross_entropy: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.maximum(0.0, LOG2 - cross_entropy.mean(axis))


def _fano(errors: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.maximum(0.0, LOG2 - binary_entropy(np.minimum(errors.mean(axis), 0.5)))


def pinsker_accuracy(mi_nats: float) -> float:
    """The highest detection accuracy that leakage I allows for balanced classes: ½ + √(I/2), at most 1."""
    return float(min(1.0, 0.5 + math.sqrt(max(mi_nats, 0.0) / 2)))


@dataclass(frozen=True)
class ProbeResult:
    mi_nats: Interval
    fano_nats: Interval
    accuracy: Interval
    cross_entropy: float


@dataclass(frozen=True)
class Leakage:
    """The probes' results and the headline: the probe with the largest Î (the tightest lower bound)."""

    probes: dict[str, ProbeResult]
    best: str

    @property
    def mi_nats(self) -> Interval:
        return self.probes[self.best].mi_nats

    @property
    def fano_nats(self) -> Interval:
        return max((p.fano_nats for p in self.probes.values()), key=lambda i: i.value)

    @property
    def pinsker_max_accuracy(self) -> Interval:
        mi = self.mi_nats
        return Interval(pinsker_accuracy(mi.value), pinsker_accuracy(mi.ci_low), pinsker_accuracy(mi.ci_high))


def probe_leakage(features: np.ndarray, labels: np.ndarray, folds: int = 5, delta: float = 1e-3, seed: int = 0,
                  boot: Bootstrap = DEFAULT_BOOTSTRAP) -> Leakage:
    """Cross-fitted probes on (features, labels), labels balanced 0/1."""
    labels = np.asarray(labels, dtype=int)
    if (labels == 1).sum() != (labels == 0).sum():
        raise ValueError("the certificate needs as many concept images as neutral ones")
    results = {}
    for name, probe in _probes(seed).items():
        q = np.clip(heldout_probabilities(probe, np.asarray(features, dtype=float), labels, folds, seed), delta,
                    1 - delta)
        cross_entropy = -np.log(q)
        errors = (q < 0.5).astype(float)
        results[name] = ProbeResult(
            mi_nats=bootstrap_interval(_mi, [cross_entropy], boot, vectorized=True),
            fano_nats=bootstrap_interval(_fano, [errors], boot, vectorized=True),
            accuracy=bootstrap_interval(lambda e, axis=-1: 1 - e.mean(axis), [errors], boot, vectorized=True),
            cross_entropy=float(cross_entropy.mean()))
    best = max(results, key=lambda n: results[n].mi_nats.value)
    return Leakage(results, best)
