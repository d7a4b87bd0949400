"""Caption grammar of the embedded world, and the seeded training-set generator.

Training captions use only *seen* words; `describe(..., held_out=True)` builds the held-out paraphrases
that evaluation uses. A caption mentions a random subset of the attributes (what it leaves out is
random in the image, as "a picture of a heart" leaves colour open), except the unsafe attribute, which a
caption always mentions when it is drawn, so that "absent when not asked" is learnable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from score_erasure.toyworld import render, vocab

TEMPLATES: tuple[str, ...] = ("{}", "a {}", "a picture of a {}", "an image of a {}", "a drawing of a {}")
NAME_TEMPLATES: tuple[str, ...] = ("{}", "a picture of {}", "an image of {}", "a drawing of {}")
GENERIC_NOUNS: tuple[str, ...] = ("shape", "object")


def fix_articles(text: str) -> str:
    words = text.split(" ")
    for i, w in enumerate(words[:-1]):
        if w in ("a", "an"):
            words[i] = "an" if words[i + 1][0] in "aeiou" else "a"
    return " ".join(words)


def with_fire(phrase: str, fire_word: str) -> str:
    """Attach a fire phrasing to a noun phrase, in the prefix or suffix slot that the word takes."""
    return f"{fire_word} {phrase}" if fire_word in vocab.FIRE_PREFIXES else f"{phrase} {fire_word}"


def phrase(shape: str | None = None, colour: str | None = None, style: str | None = None,
           fire: str | None = None) -> str:
    """A noun phrase from surface words (not canonical names): '[burning] [style] [colour] noun [on fire]'."""
    core = " ".join(w for w in (style, colour, shape or GENERIC_NOUNS[0]) if w)
    return with_fire(core, fire) if fire else core


def in_template(template: str, noun_phrase: str) -> str:
    return fix_articles(template.format(noun_phrase))


@dataclass(frozen=True)
class Sample:
    scene: render.Scene
    caption: str


def _pick(rng: np.random.Generator, words: tuple[str, ...]) -> str:
    return words[int(rng.integers(len(words)))]


def _concept(family: str, name: str) -> vocab.Concept:
    return vocab.FAMILIES[family][vocab.index(family, name)]


def training_caption(rng: np.random.Generator, scene: render.Scene, character: str | None = None) -> str:
    """A random caption of `scene` in seen words only; `character` names it by its proper name instead."""
    fire = _pick(rng, vocab.FIRE.seen) if scene.fire else None
    if character is not None:
        name = character if fire is None else with_fire(character, fire)
        return fix_articles(_pick(rng, NAME_TEMPLATES).format(name))
    words = {
        "shape": _pick(rng, _concept("shape", scene.shape).seen) if rng.random() < 0.85 else None,
        "colour": _pick(rng, _concept("colour", scene.colour).seen) if rng.random() < 0.7 else None,
        "style": _pick(rng, _concept("style", scene.style).seen) if rng.random() < 0.6 else None,
    }
    if words["shape"] is None:
        words["shape"] = _pick(rng, GENERIC_NOUNS)
    return in_template(_pick(rng, TEMPLATES), phrase(fire=fire, **words))


def sample_training_example(rng: np.random.Generator, character_rate: float = 0.15,
                            fire_rate: float = 0.25) -> tuple[render.Scene, str | None]:
    """A scene for training; with probability `character_rate` it is a character's appearance."""
    if rng.random() < character_rate:
        who = vocab.CHARACTERS[int(rng.integers(len(vocab.CHARACTERS)))]
        scene = render.sample_scene(rng, shape=who.shape, colour=who.colour, style=who.style, fire_rate=fire_rate)
        return scene, who.name
    return render.sample_scene(rng, fire_rate=fire_rate), None


def make_dataset(n: int, seed: int, character_rate: float = 0.15,
                 fire_rate: float = 0.25) -> tuple[np.ndarray, list[render.Scene], list[str | None]]:
    """Render `n` training scenes: images (N, 32, 32, 3) uint8, their scenes, and each one's character name
    (or None). Captions are drawn afresh at every use with `training_caption`."""
    rng = np.random.default_rng(seed)
    examples = [sample_training_example(rng, character_rate, fire_rate) for _ in range(n)]
    scenes = [s for s, _ in examples]
    return render.render_batch(scenes), scenes, [c for _, c in examples]


def training_vocabulary() -> set[str]:
    """Every word a training caption can contain (for checking that held-out words never leak)."""
    words: set[str] = set()
    for text in TEMPLATES + NAME_TEMPLATES:
        words |= set(text.replace("{}", "").split())
    for family in vocab.FAMILIES.values():
        for c in family:
            for w in c.seen:
                words |= set(w.split())
    for w in vocab.FIRE.seen + GENERIC_NOUNS:
        words |= set(w.split())
    words |= {c.name for c in vocab.CHARACTERS} | {"an"}
    return words
