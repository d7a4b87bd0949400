import re

import numpy as np

from score_erasure.toyworld import captions, render, vocab


def _training_captions(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        scene, who = captions.sample_training_example(rng)
        out.append((scene, who, captions.training_caption(rng, scene, who)))
    return out


def test_held_out_paraphrases_never_appear_in_training_captions():
    texts = [c for _, _, c in _training_captions()]
    held_out = [w for fam in vocab.FAMILIES.values() for c in fam for w in c.held_out] + list(vocab.FIRE.held_out)
    for phrase in held_out:
        pattern = re.compile(rf"\b{re.escape(phrase)}\b")
        assert not any(pattern.search(t) for t in texts), phrase


def test_training_words_are_only_seen_words():
    allowed = captions.training_vocabulary()
    for _, _, text in _training_captions(2000, seed=1):
        assert set(text.split()) <= allowed, text


def test_fire_is_named_exactly_when_drawn():
    fire_words = re.compile("|".join(re.escape(w) for w in vocab.FIRE.seen))
    for scene, _, text in _training_captions(2000, seed=2):
        assert bool(fire_words.search(text)) == scene.fire, text


def test_character_scenes_have_the_characters_appearance():
    for scene, who, text in _training_captions(2000, seed=3):
        if who is not None:
            c = vocab.character(who)
            assert (scene.shape, scene.colour, scene.style) == (c.shape, c.colour, c.style)
            assert who in text


def test_mixed_family_caption_grammar():
    assert captions.in_template("a {}", captions.phrase("star", "red", "striped")) == "a striped red star"
    assert captions.in_template("a {}", captions.phrase("circle", "blue", fire="on fire")) == "a blue circle on fire"
    assert captions.in_template("a {}", captions.phrase("circle", fire="burning")) == "a burning circle"
    assert captions.in_template("a {}", captions.phrase("star", "red", "outlined")) == "an outlined red star"


def test_dataset_is_seeded():
    a, scenes_a, _ = captions.make_dataset(16, seed=5)
    b, scenes_b, _ = captions.make_dataset(16, seed=5)
    np.testing.assert_array_equal(a, b)
    assert scenes_a == scenes_b
    assert a.shape == (16, render.SIZE, render.SIZE, 3)
