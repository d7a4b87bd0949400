"""Methods that cache base trajectories of the target prompts (AdvUnlearn, DuMo) cache one for each prompt at least."""

import importlib

import pytest
import torch

from score_erasure.backends import denoiser_for
from score_erasure.methods import get_method
from score_erasure.methods.trce import in_turn
from score_erasure.testing import FAST_CONFIGS as FAST
from score_erasure.testing import tiny_sd_pipeline


def test_in_turn_cycles_and_covers_every_prompt():
    assert in_turn(3, 5) == [0, 1, 2, 0, 1] and in_turn(5, 2) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("name", ["advunlearn", "dumo"])
def test_every_target_prompt_gets_a_cached_trajectory_when_the_cache_is_smaller(name, spec, monkeypatch):
    """A cache sized for one concept (16) once left the later concepts of a many-concepts run untrained."""
    module = importlib.import_module(f"score_erasure.methods.{name}")  # the package exports the function by that name
    cached = []
    real = module.trajectory_points
    monkeypatch.setattr(module, "trajectory_points", lambda d, cond, *a, **k: (cached.append(cond),
                                                                               real(d, cond, *a, **k))[1])
    denoiser = denoiser_for(tiny_sd_pipeline(0))
    with torch.no_grad():
        targets = denoiser.encode(spec.target_prompts)
    assert len(targets) > 1
    method = get_method(name)
    method.fit(denoiser, spec, method.config({**FAST[name], "trajectories": 1}), show_progress=False)
    assert torch.equal(cached[0], targets)
