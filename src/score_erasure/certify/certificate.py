"""`score certify`: a probe-relative estimate of how much of a concept is left in a model's images.

N images come from concept prompts (the protocol's targets and held-out paraphrases, plus the prompts and
token vectors that attacks found, given their folders) and N from matched prompts without the concept (the
spec's anchors: the same wording with the concept removed; or the protocol's neutral prompts), image j of
either class from seed j. Fresh probes
read the judge's image features and estimate I(C; X) for the model and for its base (probes.py).

The base's images are the same in every certificate of one task whose inputs are the same (a leaderboard's
rows share the targets, paraphrases and anchors, and each row's attacks find as many prompts): given an image
cache, they are drawn once and reused, keyed by the conditioning itself and the seed list of the call that
drew them (the batch decides the last bits), so a cached image is the image a fresh draw would give.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from score_erasure.attacks.base import FoundPrompt, found_prompts
from score_erasure.backends import backend_for
from score_erasure.backends.tokens import TokenConditioning
from score_erasure.certify.probes import Leakage, fewest_images, probe_leakage
from score_erasure.certify.report import CertificateReport, leakage_record, source_records, write_certificate
from score_erasure.errors import UserError
from score_erasure.evaluation.cache import ImageCache, use_sampler
from score_erasure.evaluation.judges import load_judge
from score_erasure.evaluation.protocol import Protocol
from score_erasure.generate import generate
from score_erasure.progress import progress_bar
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


def _drawn(pipe, found: FoundPrompt, seeds: list[int], protocol: Protocol, cache: tuple[ImageCache, str] | None
           ) -> np.ndarray:
    """One input's images at `seeds`, from `cache` (the cache and the pipe's model hash) when it holds them."""
    condition = found.condition(backend_for(pipe))
    if cache is not None:
        store, model_hash = cache
        values = condition.embeds if isinstance(condition, TokenConditioning) else condition
        digest = hashlib.sha256(values.float().contiguous().numpy().tobytes() + json.dumps(seeds).encode())
        key = f"certificate {digest.hexdigest()}"  # not a prompt: the conditioning and the call's seeds
        cached = [store.load(model_hash, protocol.sampling, key, s) for s in seeds]
        if all(image is not None for image in cached):
            store.hits += len(seeds)
            return np.stack(cached)
    drawn = generate(pipe, [found.adversarial], seeds, steps=protocol.sampling.steps,
                     guidance=protocol.sampling.guidance, prompt_embeds=condition, show_progress=False)[0]
    if cache is not None:
        for s, image in zip(seeds, drawn, strict=True):
            store.store(model_hash, protocol.sampling, key, s, image)
        store.generated += len(seeds)
    return drawn


def class_images(pipe, inputs: list[FoundPrompt], n: int, protocol: Protocol, seed: int,
                 cache: tuple[ImageCache, str] | None = None, label: str | None = None) -> np.ndarray:
    """n images; image j uses seed `seed + j` and input j mod len(inputs); a progress bar named `label`.

    Both classes use the same n seeds, one image per seed: with seeds reused within a class and not across,
    a probe could learn which noises a class drew instead of what the prompts put in the images."""
    use_sampler(pipe, protocol.sampling.sampler)
    images: list[np.ndarray | None] = [None] * n
    with progress_bar() as bar:
        task = bar.add_task(label or "", total=n, info="", visible=label is not None)
        for i, found in enumerate(inputs[:n]):
            rows = list(range(i, n, len(inputs)))
            for j, image in zip(rows, _drawn(pipe, found, [seed + j for j in rows], protocol, cache), strict=True):
                images[j] = image
            bar.update(task, advance=len(rows), info=f"{cache[0].hits} cached" if cache else "")
    return np.stack(images)


def leakage_of(pipe, judge, concept_inputs: list[FoundPrompt], neutral_inputs: list[FoundPrompt], protocol: Protocol,
               cfg: CertifyConfig, sources: list[str] | None = None, cache: tuple[ImageCache, str] | None = None,
               who: str = "model") -> tuple[Leakage, np.ndarray, np.ndarray, dict[str, Leakage | None]]:
    """The leakage over all concept images, the two classes' images, and the leakage of each source's images
    alone against the neutral images of the same seeds (None where a source drew too few to probe)."""
    concept_images, neutral_images = (class_images(pipe, inputs, cfg.n, protocol, cfg.seed, cache,
                                                   f"certificate, {who}: {name}")
                                      for inputs, name in ((concept_inputs, "concept"), (neutral_inputs, "neutral")))
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
                      out: Path, start: float | None = None, judge=None, cache: ImageCache | None = None):
    """The certificate of loaded pipelines (`score certify`, and `score bench --certify` on an erased pipeline
    that has no files): `names` and `hashes` identify (model, base) in the report; the base's images come from
    and go to `cache` (the model's too when it is the base)."""
    base_cache = (cache, hashes[1]) if cache is not None and cache.root is not None else None
    start = time.time() if start is None else start
    judge = judge or features_judge(protocol)
    concept_inputs, neutral_inputs, sources = certificate_inputs(backend_for(pipe), protocol, concept, spec,
                                                                 cfg.neutral, attack_folders)
    leak, concept_images, neutral_images, per_source = leakage_of(pipe, judge, concept_inputs, neutral_inputs,
                                                                  protocol, cfg, sources,
                                                                  base_cache if base_pipe is pipe else None)
    base_leak, base_concept_images, base_neutral_images, base_per_source = (
        (leak, concept_images, neutral_images, per_source) if base_pipe is pipe
        else leakage_of(base_pipe, judge, concept_inputs, neutral_inputs, protocol, cfg, sources, base_cache, "base"))
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
