import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from score_erasure.methods.score import intersect_saliency, top_fraction


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 5), st.integers(0, 10_000))
def test_mask_is_exactly_the_intersection_of_top_halves(n_maps, seed):
    gen = torch.Generator().manual_seed(seed)
    maps = [{"w": torch.rand(6, 7, generator=gen), "b": torch.rand(9, generator=gen)} for _ in range(n_maps)]
    mask = intersect_saliency(maps, keep=0.5)
    for name in ("w", "b"):
        expected = torch.ones_like(maps[0][name], dtype=torch.bool)
        for m in maps:
            top = torch.zeros(m[name].numel(), dtype=torch.bool)
            top[m[name].flatten().argsort(descending=True)[: math.ceil(m[name].numel() / 2)]] = True
            expected &= top.reshape(m[name].shape)
        assert torch.equal(mask[name], expected)


def test_top_fraction_keeps_the_top_half():
    values = torch.arange(10.0)
    assert top_fraction(values, 0.5).tolist() == [False] * 5 + [True] * 5
    assert top_fraction(values, 1.0).all()
