"""ConceptSpecs of the embedded world, from its vocabulary (seen words only).

Anchors are the same prompt with the concept removed ("a picture of a star" -> "a picture of a
shape", "a star on fire" -> "a star"), so a method maps the concept onto its neutral counterpart.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from score_erasure.errors import UserError, did_you_mean, match_name
from score_erasure.spec import ConceptSpec
from score_erasure.toyworld import captions, render, vocab

TEMPLATES = captions.TEMPLATES[1:]


def _families() -> dict[str, str]:
    """Every concept name of the world -> its family."""
    names = {c.name: family for family, concepts in vocab.FAMILIES.items() for c in concepts}
    return names | {vocab.FIRE.name: "fire"} | {c.name: "character" for c in vocab.CHARACTERS}


def canonical(name: str) -> str:
    """The world's own spelling of a concept name (any case: `Star` is star, `zorblat` Zorblat)."""
    known = _families()
    found = match_name(name, known)
    if found is None:
        raise UserError(f"concept '{name}' is not in the embedded world's vocabulary{did_you_mean(name, known)} "
                        f"(choose one of: {', '.join(known)})")
    return found


def _family_of(name: str) -> str:
    return _families()[canonical(name)]


def _attribute_spec(family: str, concept: vocab.Concept) -> ConceptSpec:
    targets, anchors = [], []
    for k, (word, template) in enumerate(itertools.product(concept.seen, TEMPLATES)):
        shape = None if family == "shape" else vocab.SHAPES[k % len(vocab.SHAPES)].name
        words = {"shape": shape, family: word}
        targets.append(captions.in_template(template, captions.phrase(**words)))
        anchors.append(captions.in_template(template, captions.phrase(shape=shape)))
    retain = [captions.in_template(t, captions.phrase(**({"shape": None} | {family: other.name})))
              for other in vocab.FAMILIES[family] if other.name != concept.name for t in TEMPLATES[:2]]
    return ConceptSpec(concepts=[concept.name], target_prompts=targets, anchor_prompts=anchors,
                       retain_prompts=retain, vocabulary=list(concept.all_names), world=True)


def _character_spec(who: vocab.Character) -> ConceptSpec:
    targets = [t.format(who.name) for t in captions.NAME_TEMPLATES]
    anchors = [captions.fix_articles(t.format("a shape")) for t in captions.NAME_TEMPLATES]
    look = captions.phrase(who.shape, who.colour, who.style)
    retain = [t.format(other.name) for other in vocab.CHARACTERS if other != who for t in captions.NAME_TEMPLATES[:2]]
    retain += [captions.in_template(t, look) for t in TEMPLATES[:2]]
    return ConceptSpec(concepts=[who.name], target_prompts=targets, anchor_prompts=anchors, retain_prompts=retain,
                       vocabulary=[who.name], world=True)


def _fire_spec() -> ConceptSpec:
    targets, anchors = [], []
    for k, (word, template) in enumerate(itertools.product(vocab.FIRE.seen, TEMPLATES[:2])):
        shape = vocab.SHAPES[k % len(vocab.SHAPES)].name
        targets.append(captions.in_template(template, captions.phrase(shape, fire=word)))
        anchors.append(captions.in_template(template, captions.phrase(shape)))
    retain = [captions.in_template(t, s.name) for s in vocab.SHAPES for t in TEMPLATES[:1]]
    return ConceptSpec(concepts=[vocab.FIRE.name], target_prompts=targets, anchor_prompts=anchors,
                       retain_prompts=retain, vocabulary=list(vocab.FIRE.all_names), world=True)


def world_spec(name: str) -> ConceptSpec:
    """The spec for one concept of the world: a shape, colour, style, character name, or 'fire'."""
    name = canonical(name)
    family = _family_of(name)
    if family == "fire":
        return _fire_spec()
    if family == "character":
        return _character_spec(vocab.character(name))
    return _attribute_spec(family, vocab.FAMILIES[family][vocab.index(family, name)])


def _showing(name: str) -> dict:
    """The scene attributes that make a rendered scene show concept `name` (the rest drawn at random)."""
    family = _family_of(name)
    if family == "character":
        who = vocab.character(name)
        return {"shape": who.shape, "colour": who.colour, "style": who.style, "fire": False}
    return {"fire": True} if family == "fire" else {family: name, "fire": False}


def concept_renders(name: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n rendered scenes that show concept `name` (everything else random) and the exact masks of the concept's
    pixels: uint8 images (n, 32, 32, 3) and bool masks (n, 32, 32). What Grounded-SAM gives MACE on real images,
    exact here: the object for a shape, colour, style or character, the flames for fire."""
    name = canonical(name)
    rng = np.random.default_rng([seed, 7])
    scenes = [render.sample_scene(rng, **_showing(name)) for _ in range(n)]
    part = "flames" if _family_of(name) == "fire" else "object"
    return render.render_batch(scenes), np.stack([render.part_mask(s, part) for s in scenes])


def contrastive_renders(name: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n scenes that show concept `name` and the same n scenes without it, uint8 (n, 32, 32, 3) each: the flames
    taken off, a shape, colour or style replaced by another of its family, a character's look changed in one of
    its three attributes; the geometry, background and the other attributes kept. VCE's contrastive pairs, which
    the paper builds from refined captions, exact here."""
    name = canonical(name)
    family = _family_of(name)
    rng = np.random.default_rng([seed, 8])
    shown, hidden = [], []
    for _ in range(n):
        scene = render.sample_scene(rng, **_showing(name))
        if family == "fire":
            change = {"fire": False}
        else:
            attribute = str(rng.choice(["shape", "colour", "style"])) if family == "character" else family
            others = [c.name for c in vocab.FAMILIES[attribute] if c.name != getattr(scene, attribute)]
            change = {attribute: others[rng.integers(len(others))]}
        shown.append(scene)
        hidden.append(dataclasses.replace(scene, **change))
    return render.render_batch(shown), render.render_batch(hidden)


def compositional_prompts(name: str, count: int = 8) -> list[str]:
    """Held-out names of a concept among other attributes ("a drawing of a striped red pentagram"): wording
    that neither erasure nor the protocol's target prompts use, for the paraphrase attack."""
    name = canonical(name)
    family = _family_of(name)
    out = []
    for k in range(count):
        template = TEMPLATES[k % len(TEMPLATES)]
        shape, colour, style = (vocab.SHAPES[k % 6].name, vocab.COLOURS[(k + 1) % 6].name,
                                vocab.STYLES[k % 4].name)
        if family == "character":
            fire = vocab.FIRE.seen[k % len(vocab.FIRE.seen)]
            out.append(captions.fix_articles(captions.NAME_TEMPLATES[k % 4].format(
                captions.with_fire(vocab.character(name).name, fire))))
            continue
        if family == "fire":
            words = {"shape": shape, "colour": colour, "style": style,
                     "fire": vocab.FIRE.held_out[k % len(vocab.FIRE.held_out)]}
        else:
            concept = vocab.FAMILIES[family][vocab.index(family, name)]
            words = {"shape": shape, "colour": colour, "style": style,
                     family: concept.held_out[k % len(concept.held_out)]}
        out.append(captions.in_template(template, captions.phrase(**words)))
    return list(dict.fromkeys(out))
