"""Evaluation protocols: versioned JSON data files (prompts, seeds, sampler, judge), validated and hashed.

A protocol fixes everything that decides a number, so two reports with the same `protocol_hash` were
measured the same way. The hash is SHA-256 over the canonical JSON of the validated protocol (sorted
keys, no whitespace), so reformatting the file does not change it but any edit to its content does.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from score_erasure.errors import UserError, did_you_mean, match_name

FORMAT = 2
PROMPT_GROUPS = ("target", "generality", "retained", "neutral")
#: Groups of format 2 (benchmark v2): `context`, target prompts that also name other attributes, which must survive
#: (acc_c); `lookalike`, what resembles the concept but is not it (acc_n).
V2_GROUPS = ("context", "lookalike")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Check(_Frozen):
    """One thing a judge must (or must not) see in an image, e.g. shape=star, or fire absent."""

    family: str
    value: str
    present: bool = True


class RetainedPrompt(_Frozen):
    """A prompt whose images must still show what it asks for after erasure; `expect` says what that is."""

    prompt: str
    expect: tuple[Check, ...] = Field(min_length=1)


class ConceptProtocol(_Frozen):
    """The prompt groups for erasing one concept; `detect` is what "the concept is present" means."""

    detect: tuple[Check, ...] = Field(min_length=1)
    target: tuple[str, ...] = Field(min_length=1)
    generality: tuple[str, ...] = Field(min_length=1)
    retained: tuple[RetainedPrompt, ...] = Field(min_length=1)
    context: tuple[RetainedPrompt, ...] = ()
    lookalike: tuple[RetainedPrompt, ...] = ()
    # how the look-alikes were chosen: each candidate's distance to the concept in the judge's feature space
    lookalike_distances: dict[str, float] = Field(default_factory=dict)


class Sampling(_Frozen):
    sampler: Literal["ddim", "euler", "dpmsolver"] = "ddim"
    steps: int = Field(25, ge=1)
    guidance: float = Field(3.0, ge=0)


class JudgeSpec(_Frozen):
    """Which `ConceptJudge` reads the images, and its options (thresholds, classes, model), all recorded."""

    name: str
    options: dict = Field(default_factory=dict)


class Bootstrap(_Frozen):
    resamples: int = Field(1000, ge=50)
    confidence: float = Field(0.95, gt=0, lt=1)
    seed: int = 0


class Protocol(_Frozen):
    format: Literal[1, 2] = FORMAT
    name: str
    version: str
    task: str
    description: str = ""
    judge: JudgeSpec
    sampling: Sampling = Sampling()
    seeds: tuple[int, ...] = Field(min_length=2)
    neutral: tuple[str, ...] = Field(min_length=2)
    bootstrap: Bootstrap = Bootstrap()
    concepts: dict[str, ConceptProtocol] = Field(min_length=1)
    # Where the prompts came from, for protocols built from a standard set (its file name and SHA-256, the
    # build options, per-prompt seeds); absent from hand-written protocols.
    source: dict | None = None
    # Seeds of particular prompts (I2P and UnlearnDiffAtk give each prompt its own): image j of such a prompt uses
    # prompt_seeds[prompt][j] instead of seeds[j]; as many as `seeds`.
    prompt_seeds: dict[str, tuple[int, ...]] = Field(default_factory=dict)
    # Format 2: seeds of the base model's second draw of the neutral prompts, the fidelity floor (the base
    # against itself at other seeds); as many as `seeds`, none of them among `seeds`.
    floor_seeds: tuple[int, ...] = ()

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(seeds)) != len(seeds):
            raise ValueError("seeds must be distinct")
        return seeds

    @model_validator(mode="after")
    def _no_empty_prompts(self) -> Protocol:
        for name, concept in self.concepts.items():
            prompts = [*concept.target, *concept.generality, *(r.prompt for r in concept.retained)]
            if any(not p.strip() for p in prompts):
                raise ValueError(f"concept '{name}' has an empty prompt")
        if any(not p.strip() for p in self.neutral):
            raise ValueError("empty neutral prompt")
        if self.floor_seeds and (len(self.floor_seeds) != len(self.seeds) or set(self.floor_seeds) & set(self.seeds)
                                 or len(set(self.floor_seeds)) != len(self.floor_seeds)):
            raise ValueError(f"floor_seeds must be {len(self.seeds)} distinct seeds, none of them in `seeds`")
        if self.format == 1 and (self.floor_seeds or any(c.context or c.lookalike for c in self.concepts.values())):
            raise ValueError("context, lookalike and floor_seeds need format 2")
        for prompt, seeds in self.prompt_seeds.items():
            if len(seeds) != len(self.seeds) or len(set(seeds)) != len(seeds):
                raise ValueError(f"prompt_seeds of '{prompt[:40]}' must be {len(self.seeds)} distinct seeds, as "
                                 "many as `seeds`")
        return self

    def seeds_of(self, prompt: str) -> list[int]:
        """The seeds of a prompt's images: its own, or the protocol's."""
        return list(self.prompt_seeds.get(prompt, self.seeds))

    @property
    def images_per_prompt(self) -> int:
        return len(self.seeds)

    def canonical(self, name: str) -> str:
        """The protocol's own spelling of a concept name (matched in any case); a one-line error names the valid
        concepts and the nearest one."""
        found = match_name(name, self.concepts)
        if found is None:
            raise UserError(f"concept '{name}' is not in protocol '{self.name}' (task {self.task})"
                            f"{did_you_mean(name, self.concepts)}; choose one of: {', '.join(self.concepts)}")
        return found

    def concept(self, name: str) -> ConceptProtocol:
        """The concept's prompt groups."""
        return self.concepts[self.canonical(name)]

    def prompts(self, concept: str) -> dict[str, list[str]]:
        """Prompts per group, in the order of the file: the four groups of format 1, then those of V2_GROUPS that
        the concept has."""
        c = self.concept(concept)
        extra = {g: [r.prompt for r in getattr(c, g)] for g in V2_GROUPS if getattr(c, g)}
        return {"target": list(c.target), "generality": list(c.generality),
                "retained": [r.prompt for r in c.retained], "neutral": list(self.neutral), **extra}

    def expectations(self, concept: str, group: str) -> tuple[RetainedPrompt, ...]:
        """The prompts of a group judged by their own expectations (retained, context, lookalike)."""
        return getattr(self.concept(concept), group)

    def canonical_json(self) -> str:
        # Fields left empty are left out, so protocols written before they existed keep their hash.
        data = self.model_dump(mode="json")
        for key, empty in (("source", None), ("prompt_seeds", {}), ("floor_seeds", [])):
            if data[key] == empty:
                del data[key]
        for concept in data["concepts"].values():
            for key in (*V2_GROUPS, "lookalike_distances"):
                if not concept[key]:
                    del concept[key]
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


class ConceptSet(_Frozen):
    """Concepts erased together in one run: prompts naming each of them (`erased`, expected *not* drawn: acc_e is
    the fraction where the expectation still holds) and prompts naming what else the world has (`kept`: acc_s)."""

    concepts: tuple[str, ...] = Field(min_length=1)
    erased: tuple[RetainedPrompt, ...] = Field(min_length=1)
    kept: tuple[RetainedPrompt, ...] = Field(min_length=1)


class SetsProtocol(_Frozen):
    """Benchmark v2's many-concepts curve: fixed sets of k concepts across families, each erased in one run."""

    format: Literal[2] = 2
    name: str
    version: str
    description: str = ""
    judge: JudgeSpec
    sampling: Sampling = Sampling()
    seeds: tuple[int, ...] = Field(min_length=2)
    bootstrap: Bootstrap = Bootstrap()
    sets: dict[str, ConceptSet] = Field(min_length=1)  # keyed by k

    @property
    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True,
                                         separators=(",", ":")).encode()).hexdigest()


def packaged_sets_path(name: str = "world-many") -> Path:
    """A packaged many-concepts protocol by name, or `name` itself when it is a JSON file."""
    folder = resources.files("score_erasure.evaluation") / "protocols" / "sets"
    if name.endswith(".json"):
        return Path(name)
    known = sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))
    if name not in known:
        raise UserError(f"unknown concept sets '{name}'; choose one of: {', '.join(known)}, or a JSON file")
    return Path(str(folder / f"{name}.json"))


def load_sets(path: Path | None = None) -> SetsProtocol:
    """The many-concepts protocol (the packaged one by default); a bad file is a one-line `UserError`."""
    path = Path(path or packaged_sets_path())
    try:
        return SetsProtocol.model_validate_json(path.read_text())
    except OSError as exc:
        raise UserError(f"cannot read concept-sets file '{path}': {exc.strerror or exc}") from exc
    except ValidationError as exc:
        raise UserError(f"concept-sets file '{path}' is invalid: {_first_error(exc)}") from exc


def packaged_tasks() -> list[str]:
    """Tasks with a protocol shipped in the package (`protocols/<task>.json`)."""
    folder = resources.files("score_erasure.evaluation") / "protocols"
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def packaged_path(task: str) -> Path:
    """The packaged protocol file of `task` (version 2), or of `task@1` (version 1, for the tables measured with
    it)."""
    name, _, version = task.partition("@")
    tasks = packaged_tasks()
    if name not in tasks or version not in ("", "1", "2"):
        raise UserError(f"unknown task '{task}'; choose one of: {', '.join(tasks)} (or TASK@1 for protocol "
                        "version 1, or pass --protocol FILE)")
    folder = "v1/" if version == "1" else ""
    return Path(str(resources.files("score_erasure.evaluation") / "protocols" / f"{folder}{name}.json"))


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "top level"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {err['msg']}{more}"


def load_protocol(path: Path) -> Protocol:
    """Read and validate a protocol file; anything wrong with it is a one-line `UserError`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise UserError(f"cannot read protocol file '{path}': {exc.strerror or exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"protocol file '{path}' is not valid JSON: {exc}") from exc
    try:
        return Protocol.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"protocol file '{path}' is invalid: {_first_error(exc)}") from exc


def resolve_protocol(task: str | None, path: Path | None = None, concept: str | None = None) -> Protocol:
    """The protocol for `task`: the given file (whose task must match) or the packaged one; with neither, the one
    packaged protocol that has `concept` (`-c star` needs no `--task object`)."""
    if path is None:
        if task is None:
            protocols = {t: load_protocol(packaged_path(t)) for t in packaged_tasks()}
            owners = [t for t, p in protocols.items() if concept and match_name(concept, p.concepts)]
            if not owners and concept:
                known = [c for p in protocols.values() for c in p.concepts]
                raise UserError(f"concept '{concept}' is in no packaged protocol{did_you_mean(concept, known)} "
                                f"(choose one of: {', '.join(known)}), or pass --protocol FILE")
            if len(owners) != 1:
                raise UserError("pass --task (one of: " + ", ".join(packaged_tasks()) + ") or --protocol FILE")
            task = owners[0]
        return load_protocol(packaged_path(task))
    protocol = load_protocol(path)
    if task is not None and protocol.task != task:
        raise UserError(f"protocol file '{path}' is for task '{protocol.task}', not '{task}'; "
                        "drop --task or pass the matching file")
    return protocol
