"""The world's protocol files are this generator's output, and their generality prompts use unseen words."""

import pytest

from score_erasure.evaluation.protocol import load_protocol, packaged_path
from score_erasure.toyworld import captions, protocols

TASKS = list(protocols.TASK_FAMILY)


@pytest.mark.parametrize("task", TASKS)
def test_packaged_file_is_the_generator_output(task):
    assert packaged_path(task).read_text() == protocols.render_json(task), \
        "regenerate with `python -m score_erasure.toyworld.protocols` (and bump VERSION)"


def test_generality_prompts_use_only_held_out_words():
    """Generality measures unseen wording: every generality prompt holds a word no training caption has."""
    seen = captions.training_vocabulary()
    for task in TASKS:
        p = load_protocol(packaged_path(task))
        for name, concept in p.concepts.items():
            for prompt in concept.generality:
                assert set(prompt.replace(",", "").split()) - seen, (task, name, prompt)
