import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from score_erasure.methods.score import concept_blocks, intersect_saliency, top_fraction, union_of_intersections
from score_erasure.spec import ConceptSpec, combine_specs


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


def test_each_concept_is_one_block_of_target_prompts():
    star = ConceptSpec.from_words(["star"], ["pentagram", "a star shape"])
    zorblat = ConceptSpec.from_words(["Zorblat"], ["the Zorblat creature"])
    assert concept_blocks(star) == [[0, 1, 2]]
    # a first prompt that names no concept (a synonym) does not split its concept in two
    assert concept_blocks(ConceptSpec.from_words(["star"], ["pentagram"]).model_copy(
        update={"target_prompts": ["pentagram", "star"], "anchor_prompts": ["", ""]})) == [[0, 1]]
    assert concept_blocks(combine_specs([star, zorblat])) == [[0, 1, 2], [3, 4]]


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 3), st.integers(0, 10_000))
def test_mask_of_several_concepts_is_the_union_of_their_intersections(n_concepts, seed):
    gen = torch.Generator().manual_seed(seed)
    per_concept = [[{"w": torch.rand(5, 8, generator=gen)} for _ in range(3)] for _ in range(n_concepts)]
    mask = union_of_intersections(per_concept, keep=0.5)
    expected = torch.zeros(5, 8, dtype=torch.bool)
    for maps in per_concept:
        expected |= intersect_saliency(maps, keep=0.5)["w"]
    assert torch.equal(mask["w"], expected)
    if n_concepts == 1:  # one concept: the mask of a single-concept run, unchanged
        assert torch.equal(mask["w"], intersect_saliency(per_concept[0], keep=0.5)["w"])
