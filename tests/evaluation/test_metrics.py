"""Metrics on synthetic judge outputs and features whose true values are known."""

import numpy as np
import pytest
import torch

from score_erasure.evaluation import metrics
from score_erasure.evaluation.protocol import Bootstrap

FAST = Bootstrap(resamples=200, seed=0)


@pytest.mark.parametrize(("acc_e", "acc_s", "acc_g", "h"), [
    (0.0, 1.0, 0.0, 1.0),          # perfect erasure, nothing else touched
    (0.5, 0.5, 0.5, 0.5),
    (0.1, 0.9, 0.4, 3 / (1 / 0.9 + 1 / 0.9 + 1 / 0.6)),
    (1.0, 1.0, 0.0, 0.0),          # nothing erased: a term is infinite, H is 0 (its limit)
    (0.0, 0.0, 0.0, 0.0),          # everything else destroyed
])
def test_harmonic_h_known_values(acc_e, acc_s, acc_g, h):
    assert float(metrics.harmonic_h(acc_e, acc_s, acc_g)) == pytest.approx(h)


def test_rate_interval_covers_the_true_rate_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    p, covered = 0.3, 0
    for _ in range(100):
        got = metrics.mean_interval(rng.random(200) < p, FAST)
        assert got.ci_low <= got.value <= got.ci_high
        covered += got.ci_low <= p <= got.ci_high
    assert covered >= 88


def test_h_interval_covers_the_true_h():
    rng = np.random.default_rng(1)
    e, s, g = rng.random(400) < 0.1, rng.random(400) < 0.9, rng.random(400) < 0.2
    got = metrics.h_interval(e, s, g, FAST)
    truth = float(metrics.harmonic_h(0.1, 0.9, 0.2))
    assert got.value == pytest.approx(float(metrics.harmonic_h(e.mean(), s.mean(), g.mean())))
    assert got.ci_low <= truth <= got.ci_high
    assert got.ci_high - got.ci_low < 0.1


def test_constant_data_gives_a_point_interval():
    got = metrics.mean_interval(np.ones(50, bool), FAST)
    assert (got.value, got.ci_low, got.ci_high) == (1.0, 1.0, 1.0)


def test_fid_of_gaussians_with_shifted_means():
    """FID(N(0, I), N(mu, I)) = |mu|^2."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(600, 4, generator=gen)
    shifted = torch.randn(600, 4, generator=gen) + torch.tensor([1.0, 0, 0, 0])
    got = metrics.fid(base, shifted, FAST)
    assert got.value == pytest.approx(1.0, abs=0.25)
    assert got.ci_low <= 1.0 <= got.ci_high


def test_fid_and_kid_are_zero_for_identical_sets():
    feats = torch.randn(100, 8, generator=torch.Generator().manual_seed(2))
    assert metrics.fid(feats, feats.clone(), FAST).value == pytest.approx(0.0, abs=1e-4)
    kid = metrics.kid(feats, feats.clone(), FAST)
    assert (kid.value, kid.ci_low, kid.ci_high) == (0.0, 0.0, 0.0)


def test_kid_sees_a_shift_with_an_interval_above_zero():
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(200, 8, generator=gen)
    same = metrics.kid(base, torch.randn(200, 8, generator=gen), FAST)
    moved = metrics.kid(base, torch.randn(200, 8, generator=gen) + 1.5, FAST)
    assert same.ci_low <= 0 <= same.ci_high
    assert moved.ci_low > 0 and moved.value > 10 * abs(same.value)


def test_seeded_drift_identical_and_noisy_images():
    rng = np.random.default_rng(4)
    ramp = np.linspace(30, 220, 32)
    images = np.broadcast_to((ramp[:, None, None] + ramp[None, :, None]) / 2, (6, 32, 32, 3)).astype(np.uint8)

    def noisy(level):
        return np.clip(images.astype(int) + rng.integers(-level, level + 1, images.shape), 0, 255).astype(np.uint8)

    np.testing.assert_allclose(metrics.ssim_per_image(images, images), 1.0, atol=1e-5)
    assert (metrics.psnr_per_image(images, images) == metrics.PSNR_CAP_DB).all()
    little, lots = noisy(5), noisy(40)
    assert (metrics.ssim_per_image(images, lots) < metrics.ssim_per_image(images, little)).all()
    assert (metrics.ssim_per_image(images, little) < 1).all()
    psnr = metrics.psnr_per_image(images, lots)
    assert ((psnr > 15) & (psnr < 30)).all()  # uniform noise of +-40 levels: about 20 dB
