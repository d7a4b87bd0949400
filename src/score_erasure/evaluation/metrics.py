"""Erasure metrics with confidence intervals.

acc_e, acc_g and acc_s are fractions of images in which a judge sees something; h is MACE's harmonic mean
3 / (1/(1-acc_e) + 1/acc_s + 1/(1-acc_g)); fid and kid compare base and evaluated images on neutral prompts
in a judge's feature space (torchmetrics' FID with precomputed features, and KID's polynomial-kernel MMD);
ssim and psnr measure the seeded drift between images generated from the same seed by the two models.
Base and evaluated images pair up by (prompt, seed).

Means and h carry BCa bootstrap intervals (scipy.stats.bootstrap) over images, each prompt group resampled
on its own; where BCa is undefined (all resamples equal) the percentile interval is used. fid and kid
carry delete-a-group jackknife intervals instead: a bootstrap resample repeats images, which shrinks the
feature covariance, so its FIDs sit far above the estimate (about 6.7 for an estimate of 4.1 with 192
images of 128-d features) and spread 2-4x wider than FIDs of fresh samples do; the jackknife's standard
error matched the spread of fresh samples.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import stats

from score_erasure.evaluation.protocol import Bootstrap

DEFAULT_BOOTSTRAP = Bootstrap()
JACKKNIFE_GROUPS = 50
PSNR_CAP_DB = 100.0  # identical images have infinite PSNR; 8-bit images that differ at all stay below ~90 dB


@dataclass(frozen=True)
class Interval:
    value: float
    ci_low: float
    ci_high: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def bootstrap_interval(statistic: Callable[..., float], samples: Sequence[np.ndarray],
                       boot: Bootstrap = DEFAULT_BOOTSTRAP, vectorized: bool = False) -> Interval:
    """The statistic on `samples` and its bootstrap interval, each sample resampled on its own. A vectorized
    statistic takes `axis`."""
    value = float(statistic(*samples, axis=-1) if vectorized else statistic(*samples))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate-data warnings: handled below
        res = stats.bootstrap(tuple(samples), statistic, n_resamples=boot.resamples, vectorized=vectorized,
                              confidence_level=boot.confidence, method="BCa", rng=boot.seed)
    low, high = res.confidence_interval
    if not (np.isfinite(low) and np.isfinite(high)):
        tail = (1 - boot.confidence) / 2 * 100
        finite = res.bootstrap_distribution[np.isfinite(res.bootstrap_distribution)]
        low, high = np.percentile(finite, [tail, 100 - tail]) if finite.size else (value, value)
    return Interval(value, float(low), float(high))


def _mean(values: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(values, axis=axis)


def mean_interval(values: np.ndarray, boot: Bootstrap = DEFAULT_BOOTSTRAP) -> Interval:
    """Mean of per-image values (hits as booleans, or scores) with its interval."""
    return bootstrap_interval(_mean, [np.asarray(values, dtype=float).ravel()], boot, vectorized=True)


def harmonic_h(acc_e, acc_s, acc_g):
    """MACE's H = 3 / (1/(1-acc_e) + 1/acc_s + 1/(1-acc_g)); 0 where a term is 0 (its limit)."""
    acc_e, acc_s, acc_g = (np.asarray(a, dtype=float) for a in (acc_e, acc_s, acc_g))
    with np.errstate(divide="ignore"):
        total = 1 / (1 - acc_e) + 1 / acc_s + 1 / (1 - acc_g)
    return np.where(np.isfinite(total), 3 / total, 0.0)


def h_interval(target_hits: np.ndarray, retained_hits: np.ndarray, generality_hits: np.ndarray,
               boot: Bootstrap = DEFAULT_BOOTSTRAP) -> Interval:
    """H from per-image hits: target detected, retained correct, generality detected (resampled apart)."""
    def statistic(e, s, g, axis=-1):
        return harmonic_h(e.mean(axis), s.mean(axis), g.mean(axis))

    samples = [np.asarray(x, dtype=float).ravel() for x in (target_hits, retained_hits, generality_hits)]
    return bootstrap_interval(statistic, samples, boot, vectorized=True)


class PrecomputedFeatures(torch.nn.Module):
    """torchmetrics `feature=` module over features computed once by a judge: each jackknife replicate of
    FID then costs a covariance, not a network pass."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=PrecomputedFeatures(real.shape[1]))
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return max(float(metric.compute()), 0.0)  # rounding can leave -1e-6 for identical sets


def _kid(real: torch.Tensor, fake: torch.Tensor) -> float:
    """KID's squared MMD with torchmetrics' polynomial kernel, as the U-statistic for paired samples.

    torchmetrics' estimator assumes independent sets; here image i of both sets comes from the same seed,
    and keeping the k(x_i, y_i) terms would score two identical models below zero. Leaving out every
    i == j term keeps the estimate unbiased and makes it exactly 0 for identical sets.
    """
    from torchmetrics.image.kid import poly_kernel

    n = len(real)
    off_diagonal = ~torch.eye(n, dtype=torch.bool)
    k_xy = poly_kernel(real, fake)
    terms = poly_kernel(real, real) + poly_kernel(fake, fake) - k_xy - k_xy.T
    return float(terms[off_diagonal].sum() / (n * (n - 1)))


def jackknife_interval(statistic: Callable[[np.ndarray], float], n: int, confidence: float,
                       groups: int = JACKKNIFE_GROUPS) -> Interval:
    """statistic(indices) on all n items, with a normal interval from the delete-a-group jackknife.

    Groups are contiguous runs of items; with images ordered prompt by prompt they hold images of the same
    prompt, so correlation within a prompt widens the interval as it should.
    """
    index = np.arange(n)
    value = float(statistic(index))
    blocks = np.array_split(index, min(groups, n))
    loo = np.array([statistic(np.setdiff1d(index, block, assume_unique=True)) for block in blocks])
    g = len(blocks)
    half_width = stats.norm.ppf(0.5 + confidence / 2) * np.sqrt((g - 1) / g * ((loo - loo.mean()) ** 2).sum())
    return Interval(value, value - float(half_width), value + float(half_width))


def _paired_feature_interval(distance: Callable[[torch.Tensor, torch.Tensor], float], base_features: torch.Tensor,
                             features: torch.Tensor, boot: Bootstrap) -> Interval:
    if len(base_features) != len(features):
        raise ValueError("base and evaluated features must pair up image for image (same prompts and seeds)")
    real, fake = base_features.double(), features.double()
    return jackknife_interval(lambda idx: distance(real[idx], fake[idx]), len(real), boot.confidence)


def fid(base_features: torch.Tensor, features: torch.Tensor, boot: Bootstrap = DEFAULT_BOOTSTRAP) -> Interval:
    """Frechet distance between base and evaluated feature sets (jackknife interval, floored at 0)."""
    got = _paired_feature_interval(_fid, base_features, features, boot)
    return Interval(got.value, max(got.ci_low, 0.0), got.ci_high)


def kid(base_features: torch.Tensor, features: torch.Tensor, boot: Bootstrap = DEFAULT_BOOTSTRAP) -> Interval:
    """Kernel (polynomial MMD^2) distance between base and evaluated feature sets (jackknife interval)."""
    return _paired_feature_interval(_kid, base_features, features, boot)


def floor_ratio(name: str, base_features: torch.Tensor, features: torch.Tensor, floor_features: torch.Tensor,
                boot: Bootstrap = DEFAULT_BOOTSTRAP) -> Interval:
    """How many times the model's own variation a distance is: `name` (fid or kid) from base to evaluated over
    the same from base to base at other seeds; the three sets pair image for image (prompt, seed index), and the
    interval is the delete-a-group jackknife of the ratio."""
    distance = {"fid": _fid, "kid": _kid}[name]
    real, fake, other = (x.double() for x in (base_features, features, floor_features))
    return jackknife_interval(lambda i: distance(real[i], fake[i]) / distance(real[i], other[i]), len(real),
                              boot.confidence)


def drift_ratio(drift: np.ndarray, floor_drift: np.ndarray, boot: Bootstrap = DEFAULT_BOOTSTRAP) -> Interval:
    """mean(drift) / mean(floor_drift) over paired images (e.g. 1 - ssim to the base, and of the base to itself
    at other seeds), with the jackknife interval."""
    drift, floor_drift = np.asarray(drift, dtype=float), np.asarray(floor_drift, dtype=float)
    return jackknife_interval(lambda i: drift[i].mean() / floor_drift[i].mean(), len(drift), boot.confidence)


def robust_h(acc_e: Interval, worst_asr: Interval, acc_s: Interval, acc_c: Interval) -> Interval:
    """h_rob: the harmonic mean of 1 - max(acc_e, worst ASR), acc_s and acc_c. Its interval is bounded by the
    components' intervals (all at their worst ends, then all at their best), wider than a joint bootstrap: the
    attacks' images and the evaluation's are not paired."""
    def h(e, a, s, c):
        return float(harmonic_h(max(e, a), s, 1 - c))  # harmonic_h takes 1 - its first and third terms

    return Interval(h(acc_e.value, worst_asr.value, acc_s.value, acc_c.value),
                    h(acc_e.ci_high, worst_asr.ci_high, acc_s.ci_low, acc_c.ci_low),
                    h(acc_e.ci_low, worst_asr.ci_low, acc_s.ci_high, acc_c.ci_high))


def _as_float_nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0


def ssim_per_image(base_images: np.ndarray, images: np.ndarray) -> np.ndarray:
    from torchmetrics.functional.image import structural_similarity_index_measure

    values = structural_similarity_index_measure(_as_float_nchw(images), _as_float_nchw(base_images),
                                                 data_range=1.0, reduction="none")
    return values.numpy()


def psnr_per_image(base_images: np.ndarray, images: np.ndarray) -> np.ndarray:
    """PSNR in dB per image pair, capped at PSNR_CAP_DB so identical pairs stay finite."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    values = peak_signal_noise_ratio(_as_float_nchw(images), _as_float_nchw(base_images), data_range=1.0,
                                     reduction="none", dim=(1, 2, 3))
    return values.clamp(max=PSNR_CAP_DB).numpy()
