"""Concept specs: several concepts erased at once never map one erased concept onto another."""

import json

import pytest

from score_erasure.errors import UserError
from score_erasure.methods import METHODS
from score_erasure.models import resolve_model
from score_erasure.spec import ConceptSpec, combine_specs, mentions
from score_erasure.testing import FAST_CONFIGS

PAIRS = [["star", "fire"], ["red", "star"], ["Zorblat", "striped"], ["fire", "checkered"]]


def test_mentions_matches_whole_words_in_any_case():
    assert mentions("a picture of a Star in flames", ["star"])
    assert mentions("a star in flames", ["in flames"])
    assert not mentions("a starburst", ["star"]) and not mentions("a picture of a shape", ["star", "fire"])


@pytest.mark.parametrize("concepts", PAIRS)
def test_no_anchor_or_retained_prompt_names_an_erased_concept(concepts):
    spec = resolve_model("embedded").spec(concepts)
    words = spec.vocabulary
    assert set(spec.concepts) == set(concepts) and len(spec.target_prompts) == len(spec.anchor_prompts) > 0
    for prompt in spec.anchor_prompts + spec.retain_prompts:
        assert not mentions(prompt, words), prompt
    for concept in concepts:  # every concept keeps target prompts of its own
        single = resolve_model("embedded").spec([concept])
        assert set(single.target_prompts) & set(spec.target_prompts)


def test_the_star_in_flames_is_not_mapped_onto_a_star():
    """The pair that taught the star back under `uce -c star -c fire` (issue #22)."""
    spec = resolve_model("embedded").spec(["star", "fire"])
    pairs = dict(zip(spec.target_prompts, spec.anchor_prompts, strict=True))
    assert "a picture of a star in flames" not in pairs or not mentions(pairs["a picture of a star in flames"],
                                                                       ["star"])
    assert "a picture of a star" not in spec.anchor_prompts


def test_one_concept_is_its_own_spec():
    spec = resolve_model("embedded").spec(["star"])
    assert combine_specs([spec]) == spec


def test_a_concept_whose_every_anchor_names_the_other_is_refused():
    a = ConceptSpec(concepts=["wolf"], target_prompts=["a wolf in the snow"], anchor_prompts=["a dog in the snow"])
    b = ConceptSpec.from_words(["dog"])
    with pytest.raises(UserError, match="every anchor of 'wolf' names another concept"):
        combine_specs([a, b])


@pytest.mark.parametrize("method", [name for name, m in METHODS.items() if "sd" in m.families])
def test_every_method_erases_two_concepts_with_clean_anchors(method, tiny_model_dir, tmp_path):
    from score_erasure.jobs.erase import erase

    spec = resolve_model("embedded").spec(["star", "fire"])
    erase(str(tiny_model_dir), method, spec, tmp_path, FAST_CONFIGS[method], show_progress=False)
    recorded = json.loads((tmp_path / "erase.json").read_text())["spec"]
    assert recorded["concepts"] == ["star", "fire"]
    for anchor in recorded["anchor_prompts"]:
        assert not mentions(anchor, recorded["vocabulary"]), anchor
