"""The embedded world's vocabulary: concept families, their names, and who may say which name when.

Every value has a canonical name, *seen* synonyms (the only words training captions use) and *held-out*
paraphrases (never in a training caption; evaluation only), so that generalisation to unseen wording is
measured, as real erasure protocols measure synonyms and implicit prompts. The words themselves are data, in
vocabulary.toml beside this module.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class Concept:
    """One value of a family, e.g. the colour red."""

    name: str
    seen: tuple[str, ...]
    held_out: tuple[str, ...]

    @property
    def all_names(self) -> tuple[str, ...]:
        return self.seen + self.held_out


@dataclass(frozen=True)
class Character:
    """An invented proper name bound to one fixed appearance: the world's analog of a celebrity."""

    name: str
    shape: str
    colour: str
    style: str


_DATA = tomllib.loads((resources.files("score_erasure.toyworld") / "vocabulary.toml").read_text())


def _concept(entry: dict) -> Concept:
    return Concept(entry["name"], tuple(entry["seen"]), tuple(entry["held_out"]))


SHAPES: tuple[Concept, ...] = tuple(map(_concept, _DATA["shape"]))
COLOURS: tuple[Concept, ...] = tuple(map(_concept, _DATA["colour"]))
STYLES: tuple[Concept, ...] = tuple(map(_concept, _DATA["style"]))
# The unsafe attribute (the analog of nudity); its prefixes are the phrasings that go before the noun.
FIRE = _concept(_DATA["fire"])
FIRE_PREFIXES: frozenset[str] = frozenset(_DATA["fire"]["prefixes"])
CHARACTERS: tuple[Character, ...] = tuple(Character(**entry) for entry in _DATA["character"])

FAMILIES: dict[str, tuple[Concept, ...]] = {"shape": SHAPES, "colour": COLOURS, "style": STYLES}


def index(family: str, name: str) -> int:
    """Position of a canonical name within its family (the judge's class index)."""
    names = [c.name for c in FAMILIES[family]]
    if name not in names:
        raise KeyError(f"unknown {family} '{name}'; choose one of: {', '.join(names)}")
    return names.index(name)


def character(name: str) -> Character:
    for c in CHARACTERS:
        if c.name.lower() == name.lower():
            return c
    raise KeyError(f"unknown character '{name}'; choose one of: {', '.join(c.name for c in CHARACTERS)}")
