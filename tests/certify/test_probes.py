"""The probes' leakage estimate: zero (its interval reaching 0) where the classes do not differ, near log 2
where they always do; the Fano and Pinsker companions stay in their ranges."""

import math

import numpy as np
import pytest

from score_erasure.certify.probes import binary_entropy, pinsker_accuracy, probe_leakage
from score_erasure.evaluation.protocol import Bootstrap
from score_erasure.toyworld import render
from score_erasure.toyworld.judge import WorldJudge

BOOT = Bootstrap(resamples=200)
N = 96


def _labels(n: int) -> np.ndarray:
    return np.r_[np.ones(n, dtype=int), np.zeros(n, dtype=int)]


def test_features_from_one_distribution_leak_nothing():
    # a 95% interval: about one null draw in 20 excludes 0 (rng seed 0 is one); this draw is typical
    features = np.random.default_rng(2).normal(size=(2 * N, 32))
    leak = probe_leakage(features, _labels(N), folds=4, boot=BOOT)
    assert leak.mi_nats.ci_low <= 0 <= leak.mi_nats.ci_high and leak.mi_nats.value < 0.05
    assert leak.pinsker_max_accuracy.value < 0.66


def test_separated_features_leak_about_log_2():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(2 * N, 32))
    features[:N, 0] += 8
    leak = probe_leakage(features, _labels(N), folds=4, boot=BOOT)
    assert math.log(2) - 0.1 < leak.mi_nats.value <= math.log(2)
    assert leak.fano_nats.value > 0.5 and leak.pinsker_max_accuracy.value == 1.0
    assert set(leak.probes) == {"logistic", "mlp"}


@pytest.fixture(scope="module")
def world_features():
    """Judge features of rendered stars (two independent draws) and rendered circles."""
    judge = WorldJudge.load()
    rng = np.random.default_rng(0)
    draw = {name: judge.features(render.render_batch([render.sample_scene(rng, shape=shape) for _ in range(N)]))
            .numpy() for name, shape in (("stars", "star"), ("more stars", "star"), ("circles", "circle"))}
    return draw


def test_rendered_images_of_the_same_prompt_give_an_interval_containing_0(world_features):
    features = np.concatenate([world_features["stars"], world_features["more stars"]])
    leak = probe_leakage(features, _labels(N), folds=4, boot=BOOT)
    assert leak.mi_nats.ci_low <= 0 <= leak.mi_nats.ci_high and leak.mi_nats.value < 0.05


def test_rendered_stars_against_circles_leak_about_log_2(world_features):
    features = np.concatenate([world_features["stars"], world_features["circles"]])
    leak = probe_leakage(features, _labels(N), folds=4, boot=BOOT)
    assert leak.mi_nats.value > math.log(2) - 0.1


def test_bounds_helpers():
    assert pinsker_accuracy(0.0) == 0.5 and pinsker_accuracy(math.log(2)) == 1.0
    assert binary_entropy(np.array([0.5]))[0] == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="as many concept images"):
        probe_leakage(np.zeros((3, 2)), np.array([1, 0, 0]))
