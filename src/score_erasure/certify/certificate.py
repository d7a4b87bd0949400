"""`score certify`: a probe-relative estimate of how much of a concept is left in a model's images.

N images come from concept prompts (the protocol's targets and held-out paraphrases, plus the prompts and
token vectors that attacks found, given their folders) and N from matched prompts without the concept (the
spec's anchors: the same wording with the concept removed; or the protocol's neutral prompts), image j of
either class from seed j. Fresh probes
read the judge's image features and estimate I(C; X) for the model and for its base (probes.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from score_erasure.attacks.base import FoundPrompt, found_prompts
from score_erasure.backends import denoiser_for
from score_erasure.certify.probes import Leakage, fewest_images, probe_leakage
from score_erasure.certify.report import CertificateReport, leakage_record, source_records, write_certificate
from score_erasure.errors import UserError
from score_erasure.evaluation.cache import use_sampler
from score_erasure.evaluation.judges import load_judge
from score_erasure.evaluation.protocol import Protocol
from score_erasure.generate import generate
from score_erasure.prompting.tokens import token_prompt
from score_erasure.provenance import provenance
from score_erasure.spec import ConceptSpec

ASSUMPTION = (
    "Probes give a lower bound on leakage: a probe that tells concept images from neutral ones proves at least "
    "that much information about the concept is in the images, but a probe that fails proves nothing about a "
    "better one. Reading mi_nats as an upper bound (at most this much leaks) assumes that the probe family, "
    "logistic regression and a small MLP on the judge's features, is near-optimal for this concept; nothing here "
    "measures how far it is from optimal. The Pinsker accuracy inherits the same assumption.")


class CertifyConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    n: int = Field(256, ge=8)  # images per class (the research note asks for 500; 256 keeps 2 cores < 10 min)
    folds: int = Field(5, ge=2)
    delta: float = Field(1e-3, gt=0, lt=0.5)  # probabilities clipped to [δ, 1 − δ]
    neutral: Literal["anchors", "protocol"] = "anchors"
    seed: int = 0


def certificate_inputs(denoiser, protocol: Protocol, concept: str, spec: ConceptSpec, neutral: str,
                       attack_folders: list[Path]) -> tuple[list[FoundPrompt], list[FoundPrompt], list[str]]:
    """The concept prompts (targets, paraphrases, attacks' finds) and the neutral prompts, as token prompts, and
    each concept prompt's source: "targets", "paraphrases" or the attack folder's name."""
    groups = protocol.prompts(concept)
    targets = list(dict.fromkeys(groups["target"]))
    paraphrases = [p for p in dict.fromkeys(groups["generality"]) if p not in targets]
    concept_found = [FoundPrompt(token_prompt(denoiser, [p]), p) for p in targets + paraphrases]
    sources = ["targets"] * len(targets) + ["paraphrases"] * len(paraphrases)
    for folder in attack_folders:
        found = found_prompts(folder)
        concept_found += found
        sources += [Path(folder).name] * len(found)
    words = list(dict.fromkeys(spec.anchor_prompts)) if neutral == "anchors" else list(groups["neutral"])
    return concept_found, [FoundPrompt(token_prompt(denoiser, [p]), p) for p in words], sources


def class_images(pipe, inputs: list[FoundPrompt], n: int, protocol: Protocol, seed: int) -> np.ndarray:
    """n images; image j uses seed `seed + j` and input j mod len(inputs).

    Both classes use the same n seeds, one image per seed: with seeds reused within a class and not across,
    a probe could learn which noises a class drew instead of what the prompts put in the images."""
    denoiser = denoiser_for(pipe)
    use_sampler(pipe, protocol.sampling.sampler)
    images: list[np.ndarray | None] = [None] * n
    for i, found in enumerate(inputs[:n]):
        rows = list(range(i, n, len(inputs)))
        drawn = generate(pipe, [found.adversarial], [seed + j for j in rows], steps=protocol.sampling.steps,
                         guidance=protocol.sampling.guidance, prompt_embeds=found.condition(denoiser),
                         show_progress=False)[0]
        for j, image in zip(rows, drawn, strict=True):
            images[j] = image
    return np.stack(images)


def leakage_of(pipe, judge, concept_inputs: list[FoundPrompt], neutral_inputs: list[FoundPrompt], protocol: Protocol,
               cfg: CertifyConfig, sources: list[str] | None = None
               ) -> tuple[Leakage, np.ndarray, np.ndarray, dict[str, Leakage | None]]:
    """The leakage over all concept images, the two classes' images, and the leakage of each source's images
    alone against the neutral images of the same seeds (None where a source drew too few to probe)."""
    concept_images = class_images(pipe, concept_inputs, cfg.n, protocol, cfg.seed)
    neutral_images = class_images(pipe, neutral_inputs, cfg.n, protocol, cfg.seed)
    concept_features, neutral_features = judge.features(concept_images).numpy(), judge.features(neutral_images).numpy()

    def probe(rows: np.ndarray) -> Leakage:
        features = np.concatenate([concept_features[rows], neutral_features[rows]])
        labels = np.r_[np.ones(len(rows), dtype=int), np.zeros(len(rows), dtype=int)]
        return probe_leakage(features, labels, cfg.folds, cfg.delta, cfg.seed, protocol.bootstrap)

    of_image = np.array([(sources or [""] * len(concept_inputs))[j % len(concept_inputs)] for j in range(cfg.n)])
    per_source = {s: probe(np.flatnonzero(of_image == s)) if (of_image == s).sum() >= fewest_images(cfg.folds) else None
                  for s in dict.fromkeys(sources or [])}
    return probe(np.arange(cfg.n)), concept_images, neutral_images, per_source


def features_judge(protocol: Protocol):
    """The protocol's judge, which must have image features: the probes read them."""
    judge = load_judge(protocol.judge)
    if not judge.has_features:
        raise UserError(f"judge '{judge.name}' has no image features for the probes to read; use a protocol whose "
                        "judge has them (world, clip)")
    return judge


def certify_pipelines(pipe, base_pipe, names: tuple[str, str], hashes: tuple[str, str], concept: str,
                      protocol: Protocol, spec: ConceptSpec, attack_folders: list[Path], cfg: CertifyConfig,
                      out: Path, start: float | None = None, judge=None):
    """The certificate of loaded pipelines (`score certify`, and `score bench --certify` on an erased pipeline
    that has no files): `names` and `hashes` identify (model, base) in the report."""
    start = time.time() if start is None else start
    judge = judge or features_judge(protocol)
    concept_inputs, neutral_inputs, sources = certificate_inputs(denoiser_for(pipe), protocol, concept, spec,
                                                                 cfg.neutral, attack_folders)
    leak, concept_images, neutral_images, per_source = leakage_of(pipe, judge, concept_inputs, neutral_inputs,
                                                                  protocol, cfg, sources)
    base_leak, base_concept_images, base_neutral_images, base_per_source = (
        (leak, concept_images, neutral_images, per_source) if base_pipe is pipe
        else leakage_of(base_pipe, judge, concept_inputs, neutral_inputs, protocol, cfg, sources))
    report = CertificateReport(
        task=protocol.task, concept=concept, model=names[0], base=names[1], model_hash=hashes[0],
        base_hash=hashes[1], protocol={"name": protocol.name, "version": protocol.version},
        protocol_hash=protocol.hash, config={**cfg.model_dump(), "judge": judge.describe(),
                                             "sampling": protocol.sampling.model_dump(),
                                             "attack_folders": [str(f) for f in attack_folders]},
        n_per_class=cfg.n, concept_prompts=[f.adversarial for f in concept_inputs],
        neutral_prompts=[f.adversarial for f in neutral_inputs],
        **leakage_record(leak, base_leak), sources=source_records(sources, cfg.n, per_source, base_per_source),
        assumption=ASSUMPTION, **provenance(), seconds=0.0)
    report.seconds = time.time() - start
    write_certificate(report, {"model": (concept_images, neutral_images),
                               "base": (base_concept_images, base_neutral_images)}, out)
    return report
