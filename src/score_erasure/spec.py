"""ConceptSpec: what to erase, how it may be phrased, what it maps to, and what must stay.

For the embedded model it is built from the world's vocabulary (seen synonyms only: held-out
paraphrases are reserved for evaluation); for any other model from flags or a TOML file.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, field_validator

from score_erasure.errors import UserError


class ConceptSpec(BaseModel):
    """`target_prompts[i]` and `anchor_prompts[i]` are matched pairs (the same prompt without the concept);
    the anchor is what the erased concept should turn into."""

    model_config = ConfigDict(frozen=True)

    concepts: list[str]
    target_prompts: list[str]
    anchor_prompts: list[str]
    retain_prompts: list[str] = []
    # Every word or phrase that names the concept (names, synonyms, paraphrases); default: `concepts`. When
    # several concepts are erased together, no anchor or retained prompt may name any of them.
    vocabulary: list[str] = []
    # The concepts are the embedded world's: its renderer draws them with exact masks (MACE's, on that model).
    world: bool = False

    @field_validator("target_prompts")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("a concept needs at least one target prompt")
        return v

    def model_post_init(self, _context) -> None:
        if len(self.anchor_prompts) != len(self.target_prompts):
            raise ValueError("anchor_prompts must match target_prompts one to one")

    def pairs(self, repeat: int = 1) -> list[tuple[str, str]]:
        """(target, anchor) pairs in order, each `repeat` times in a row."""
        return [(t, a) for t, a in zip(self.target_prompts, self.anchor_prompts, strict=True) for _ in range(repeat)]

    def names(self) -> list[str]:
        """The words that name this spec's concepts."""
        return list(dict.fromkeys([*self.concepts, *self.vocabulary]))

    @classmethod
    def from_words(cls, concepts: list[str], synonyms: list[str] | None = None, anchor: str = "",
                   preserve: list[str] | None = None) -> ConceptSpec:
        """A spec for any model from plain words: each concept and synonym is a target prompt, mapped to
        `anchor` (default: the empty prompt, as ESD and UCE do)."""
        targets = list(dict.fromkeys([*concepts, *(synonyms or [])]))
        return cls(concepts=concepts, target_prompts=targets, anchor_prompts=[anchor] * len(targets),
                   retain_prompts=list(preserve or []), vocabulary=targets)

    @classmethod
    def from_toml(cls, path: Path) -> ConceptSpec:
        """TOML keys: concepts, synonyms, anchor, preserve (as from_words), or the full fields."""
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise UserError(f"cannot read concept file '{path}': {exc}") from exc
        if "target_prompts" in data:
            return cls(**data)
        if "concepts" not in data:
            raise UserError(f"concept file '{path}' needs a 'concepts' list")
        return cls.from_words(data["concepts"], data.get("synonyms"), data.get("anchor", ""),
                              data.get("preserve"))


def mentions(prompt: str, words: list[str]) -> bool:
    """Whether `prompt` names any of `words` (whole words, any case: "a star" names star, "a starburst" not)."""
    return any(re.search(rf"(?<!\w){re.escape(w)}(?!\w)", prompt, re.IGNORECASE) for w in words if w.strip())


def combine_specs(specs: list[ConceptSpec]) -> ConceptSpec:
    """Several concepts erased in one run. A pair whose anchor names another erased concept is dropped (mapping
    "a star in flames" onto "a star" would teach the star back while erasing it), and so is a retained prompt
    that names any of them."""
    if len(specs) == 1:
        return specs[0]
    erased = [w for s in specs for w in s.names()]
    pairs, retain = [], []
    for spec in specs:
        kept = [(t, a) for t, a in spec.pairs() if not mentions(a, erased)]
        if not kept:
            raise UserError(f"every anchor of '{', '.join(spec.concepts)}' names another concept erased with it; "
                            "erase them in separate runs or give anchors in a concept file")
        pairs += kept
        retain += [p for p in spec.retain_prompts if not mentions(p, erased)]
    return ConceptSpec(concepts=[c for s in specs for c in s.concepts], target_prompts=[t for t, _ in pairs],
                       anchor_prompts=[a for _, a in pairs], retain_prompts=list(dict.fromkeys(retain)),
                       vocabulary=list(dict.fromkeys(w for s in specs for w in s.vocabulary)),
                       world=all(s.world for s in specs))
