"""The world's protocol files are this generator's output, and their generality prompts use unseen words."""

import pytest

from score_erasure.evaluation.protocol import load_protocol, packaged_path
from score_erasure.toyworld import captions, protocols

TASKS = list(protocols.TASK_FAMILY)


@pytest.mark.parametrize("version", protocols.VERSIONS)
@pytest.mark.parametrize("task", TASKS)
def test_packaged_file_is_the_generator_output(task, version):
    path = packaged_path(task if version == protocols.VERSIONS[-1] else f"{task}@{version}")
    assert path == protocols.out_path(task, version)
    assert path.read_text() == protocols.render_json(task, version), \
        "regenerate with `python -m score_erasure.toyworld.protocols`"


@pytest.mark.parametrize("name", list(protocols.CONCEPT_SETS))
def test_packaged_concept_sets_are_the_generator_output(name):
    from score_erasure.evaluation.protocol import load_sets, packaged_sets_path

    path = packaged_sets_path(name)
    assert path == protocols.sets_path(name) and path.read_text() == protocols.render_sets(name)
    sets = load_sets(path)
    order, sizes, _ = protocols.CONCEPT_SETS[name]
    assert [list(sets.sets[str(k)].concepts) for k in sizes] == [list(order[:k]) for k in sizes]


def test_an_unknown_concept_sets_name_is_one_line():
    from score_erasure.errors import UserError
    from score_erasure.evaluation.protocol import packaged_sets_path

    with pytest.raises(UserError, match="unknown concept sets 'world-few'; choose one of: world-characters, "
                                        "world-many, or a JSON file"):
        packaged_sets_path("world-few")


def test_look_alikes_are_the_values_nearest_in_the_judges_feature_space():
    """Look-alikes are data measured, not chosen: the two candidates nearest to the concept's renders."""
    p = load_protocol(packaged_path("object"))
    for name, concept in p.concepts.items():
        nearest = sorted(concept.lookalike_distances, key=concept.lookalike_distances.get)[:2]
        assert name not in concept.lookalike_distances and len(concept.lookalike_distances) == 5
        assert {c.value for r in concept.lookalike for c in r.expect} == set(nearest), name
        assert all(c.family == "shape" for r in concept.lookalike for c in r.expect)


def test_context_prompts_name_the_concept_and_expect_everything_else():
    """acc_c's prompts are target prompts with more attributes, each of which the judge must still see."""
    for task, family in protocols.TASK_FAMILY.items():
        p = load_protocol(packaged_path(task))
        for concept in p.concepts.values():
            assert len(concept.context) == 8
            for row in concept.context:
                assert family not in {c.family for c in row.expect} and all(c.present for c in row.expect)


def test_generality_prompts_use_only_held_out_words():
    """Generality measures unseen wording: every generality prompt holds a word no training caption has."""
    seen = captions.training_vocabulary()
    for task in TASKS:
        p = load_protocol(packaged_path(task))
        for name, concept in p.concepts.items():
            for prompt in concept.generality:
                assert set(prompt.replace(",", "").split()) - seen, (task, name, prompt)
