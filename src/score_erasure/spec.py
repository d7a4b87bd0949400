"""ConceptSpec: what to erase, how it may be phrased, what it maps to, and what must stay.

For the embedded model it is built from the world's vocabulary (seen synonyms only: held-out
paraphrases are reserved for evaluation); for any other model from flags or a TOML file.
"""

from __future__ import annotations

import json
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

    @field_validator("target_prompts")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("a concept needs at least one target prompt")
        return v

    def model_post_init(self, _context) -> None:
        if len(self.anchor_prompts) != len(self.target_prompts):
            raise ValueError("anchor_prompts must match target_prompts one to one")

    @classmethod
    def from_words(cls, concepts: list[str], synonyms: list[str] | None = None, anchor: str = "",
                   preserve: list[str] | None = None) -> ConceptSpec:
        """A spec for any model from plain words: each concept and synonym is a target prompt, mapped to
        `anchor` (default: the empty prompt, as ESD and UCE do)."""
        targets = list(dict.fromkeys([*concepts, *(synonyms or [])]))
        return cls(concepts=concepts, target_prompts=targets, anchor_prompts=[anchor] * len(targets),
                   retain_prompts=list(preserve or []))

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


def merge(specs: list[ConceptSpec]) -> ConceptSpec:
    """Several concepts erased in one run; a prompt that targets one concept is not retained for another."""
    targets = [p for s in specs for p in s.target_prompts]
    retain = [p for s in specs for p in s.retain_prompts if p not in set(targets)]
    return ConceptSpec(concepts=[c for s in specs for c in s.concepts], target_prompts=targets,
                       anchor_prompts=[a for s in specs for a in s.anchor_prompts],
                       retain_prompts=list(dict.fromkeys(retain)))


def _is_world_model(model: str) -> bool:
    """An embedded model, or an erase output descending from one (its vocabulary is the world's)."""
    from score_erasure.models import EMBEDDED_MODELS, is_erase_output

    if model in EMBEDDED_MODELS:
        return True

    path = Path(model).expanduser()
    if is_erase_output(path):
        return _is_world_model(json.loads((path / "erase.json").read_text())["base_model"])
    return False


def build_spec(model: str, concepts: list[str], preserve: list[str] | None = None,
               concept_file: Path | None = None) -> ConceptSpec:
    """The spec for `--concept` on `--model`: world vocabulary for the embedded model, words otherwise."""
    if concept_file is not None:
        return ConceptSpec.from_toml(concept_file)
    if not concepts:
        raise UserError("no concept given; pass --concept NAME")
    if _is_world_model(model):
        from score_erasure.toyworld.specs import world_spec

        spec = merge([world_spec(c) for c in concepts])
        if preserve:
            spec = spec.model_copy(update={"retain_prompts": [*spec.retain_prompts, *preserve]})
        return spec
    return ConceptSpec.from_words(concepts, preserve=preserve)


def vocabulary_source(model: str, base: str) -> str:
    """Whose vocabulary names the concept when a model is judged against a base: the one of the two that
    descends from the embedded world (a base given as a plain folder is not recognised as the world's),
    else the base."""
    return model if _is_world_model(model) and not _is_world_model(base) else base


def compositional_prompts(model: str, concept: str) -> list[str]:
    """Prompts that put the concept's held-out names among other attributes: the embedded world's, from its
    vocabulary; none for other models (pass them to the paraphrase attack as extra_prompts)."""
    if not _is_world_model(model):
        return []
    from score_erasure.toyworld.specs import compositional_prompts as world_compositional

    return world_compositional(concept)
