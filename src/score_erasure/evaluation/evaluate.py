"""One evaluation: sample a model and its base on a protocol's prompts, judge the images, score them.

The flow is sample -> judge -> metrics -> report, on pipelines already loaded: `jobs.evaluate` runs it from
model names, `jobs.bench` samples the base once and compares many erased pipelines against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from score_erasure.evaluation import metrics
from score_erasure.evaluation.cache import ImageCache
from score_erasure.evaluation.judges import ClipJudge, ConceptJudge, TorchScriptFeatures, load_judge
from score_erasure.evaluation.protocol import PROMPT_GROUPS, V2_GROUPS, ConceptSet, Protocol, RetainedPrompt
from score_erasure.evaluation.report import PromptRow, Report
from score_erasure.provenance import provenance


@dataclass
class Sampled:
    """A model's images for every prompt group of one protocol concept: group -> uint8 (P, S, H, W, 3); for a base
    model, `floor` holds its second draw of the neutral prompts (the protocol's floor seeds)."""

    name: str
    hash: str
    images: dict[str, np.ndarray]
    floor: np.ndarray | None = None


@dataclass
class Scorers:
    """What reads the images: the protocol's judge, the FID/KID feature extractor, an optional CLIP."""

    judge: ConceptJudge
    features: object | None  # callable images -> (N, D) tensor, or None when there is none
    clip: ClipJudge | None = None

    def describe(self) -> dict:
        feats = self.features
        return {"judge": self.judge.describe(),
                "fid_features": str(feats.path) if isinstance(feats, TorchScriptFeatures)
                else (f"judge '{self.judge.name}'" if feats else None),
                "clip_model": self.clip.model_name if self.clip else None}


def make_scorers(protocol: Protocol, concept: str, fid_features: Path | None = None,
                 clip_model: str | None = None) -> Scorers:
    """The readers of one evaluation; checks that the judge can read every check of `concept` up front."""
    judge = load_judge(protocol.judge)
    spec = protocol.concept(concept)
    judge.validate([*spec.detect, *(c for g in ("retained", *V2_GROUPS) for r in getattr(spec, g) for c in r.expect)])
    features = TorchScriptFeatures(fid_features) if fid_features else (judge.features if judge.has_features
                                                                          else None)
    clip = ClipJudge(clip_model) if clip_model else (judge if isinstance(judge, ClipJudge) else None)
    return Scorers(judge, features, clip)


def sample(pipe, name: str, identity: str, protocol: Protocol, concept: str, cache: ImageCache,
           show_progress: bool = True, floor: bool = False) -> Sampled:
    """Images for every group, cached under `identity` (the model hash), and with `floor` the neutral prompts at
    the floor seeds. The groups of format 1 go through the cache in one call, so batches stay full and their
    images are those a format-1 protocol draws; the groups of format 2 follow in a second call."""
    groups = protocol.prompts(concept)
    images = {}
    for part in ([g for g in groups if g in PROMPT_GROUPS], [g for g in groups if g not in PROMPT_GROUPS]):
        every = list(dict.fromkeys(p for g in part for p in groups[g]))
        if every:
            drawn = cache.images(pipe, identity, protocol.sampling, every, list(protocol.seeds), show_progress,
                                 protocol.prompt_seeds)
            row = {p: i for i, p in enumerate(every)}
            images |= {g: drawn[[row[p] for p in groups[g]]] for g in part}
    second = (cache.images(pipe, identity, protocol.sampling, list(protocol.neutral), list(protocol.floor_seeds),
                           show_progress) if floor and protocol.floor_seeds else None)
    return Sampled(name, identity, images, second)


def _flat(images: np.ndarray) -> np.ndarray:
    return images.reshape(-1, *images.shape[-3:])


def judge_hits(judge: ConceptJudge, protocol: Protocol, concept: str, images: dict[str, np.ndarray]) -> dict:
    """Per group, bool (P, S): the concept detected (target, generality, neutral) or the prompt's own expectation
    met (retained, context, lookalike)."""
    spec = protocol.concept(concept)
    hits = {g: judge.check(_flat(images[g]), spec.detect).reshape(images[g].shape[:2]) for g in ("target",
                                                                                                  "generality",
                                                                                                  "neutral")}
    for g in ("retained", *V2_GROUPS):
        if g in images:
            hits[g] = expectation_hits(judge, images[g], getattr(spec, g))
    return hits


def accuracy_metrics(hits: dict[str, np.ndarray], protocol: Protocol) -> dict[str, metrics.Interval]:
    boot = protocol.bootstrap
    return {"acc_e": metrics.mean_interval(hits["target"], boot),
            "acc_g": metrics.mean_interval(hits["generality"], boot),
            "acc_s": metrics.mean_interval(hits["retained"], boot),
            "h": metrics.h_interval(hits["target"], hits["retained"], hits["generality"], boot),
            **{name: metrics.mean_interval(hits[g], boot) for name, g in (("acc_c", "context"),
                                                                         ("acc_n", "lookalike")) if g in hits}}


def fidelity_metrics(model: Sampled, base: Sampled, scorers: Scorers,
                     protocol: Protocol) -> dict[str, metrics.Interval]:
    """Neutral prompts, base vs evaluated: distribution distance (fid, kid) and seeded drift (ssim, psnr). With
    the base's second draw (`base.floor`), the same distances of the base to itself at other seeds (`*_floor`: the
    model's own variation) and each figure as a multiple of its floor (`*_ratio`; ssim as 1 - ssim)."""
    boot = protocol.bootstrap
    ours, theirs = _flat(model.images["neutral"]), _flat(base.images["neutral"])
    floor = None if base.floor is None else _flat(base.floor)
    out = {}
    if scorers.features is not None:
        feats, base_feats = scorers.features(ours), scorers.features(theirs)
        out["fid"] = metrics.fid(base_feats, feats, boot)
        out["kid"] = metrics.kid(base_feats, feats, boot)
        if floor is not None:
            floor_feats = scorers.features(floor)
            out["fid_floor"] = metrics.fid(base_feats, floor_feats, boot)
            out["kid_floor"] = metrics.kid(base_feats, floor_feats, boot)
            out["fid_ratio"] = metrics.floor_ratio("fid", base_feats, feats, floor_feats, boot)
            out["kid_ratio"] = metrics.floor_ratio("kid", base_feats, feats, floor_feats, boot)
    ssim = metrics.ssim_per_image(theirs, ours)
    out["ssim"] = metrics.mean_interval(ssim, boot)
    out["psnr"] = metrics.mean_interval(metrics.psnr_per_image(theirs, ours), boot)
    if floor is not None:
        ssim_floor = metrics.ssim_per_image(theirs, floor)
        out["ssim_floor"] = metrics.mean_interval(ssim_floor, boot)
        out["ssim_ratio"] = metrics.drift_ratio(1 - ssim, 1 - ssim_floor, boot)
    return out


def expectation_hits(judge: ConceptJudge, images: np.ndarray, rows: tuple[RetainedPrompt, ...]) -> np.ndarray:
    """bool (P, S): each prompt's images (P, S, H, W, 3) judged by that prompt's own expectations."""
    return np.stack([judge.check(images[i], r.expect) for i, r in enumerate(rows)])


def set_prompts(concept_set: ConceptSet) -> list[str]:
    """A concept set's prompts, erased then kept (the order `score_set` reads images in)."""
    return [r.prompt for r in (*concept_set.erased, *concept_set.kept)]


def score_set(images: np.ndarray, base_images: np.ndarray, concept_set: ConceptSet, scorers: Scorers,
              boot) -> dict[str, metrics.Interval]:
    """One point of the many-concepts curve: acc_e over the erased concepts' prompts, acc_s over the kept ones,
    fid between base and erased on the kept prompts; `base_acc_e` says whether the base drew the concepts."""
    n = len(concept_set.erased)
    out = {"acc_e": metrics.mean_interval(expectation_hits(scorers.judge, images[:n], concept_set.erased), boot),
           "acc_s": metrics.mean_interval(expectation_hits(scorers.judge, images[n:], concept_set.kept), boot),
           "base_acc_e": metrics.mean_interval(expectation_hits(scorers.judge, base_images[:n], concept_set.erased),
                                               boot)}
    if scorers.features is not None:
        out["fid"] = metrics.fid(scorers.features(_flat(base_images[n:])), scorers.features(_flat(images[n:])), boot)
    return out


def clip_metric(sampled: Sampled, protocol: Protocol, clip: ClipJudge) -> metrics.Interval:
    prompts = [p for p in protocol.neutral for _ in protocol.seeds]
    return metrics.mean_interval(clip.clip_score(_flat(sampled.images["neutral"]), prompts), protocol.bootstrap)


def _rows(group: str, prompts: list[str], hits: np.ndarray, base_hits: np.ndarray) -> list[PromptRow]:
    return [PromptRow(prompt=p, rate=float(hits[i].mean()), base_rate=float(base_hits[i].mean()),
                      image=f"images/{group}/{i:02d}-model.png", base_image=f"images/{group}/{i:02d}-base.png")
            for i, p in enumerate(prompts)]


def score_sampled(model: Sampled, base: Sampled, protocol: Protocol, concept: str, scorers: Scorers,
                  config: dict | None = None) -> Report:
    """Judge and score sampled images into a report (without `seconds`, which the caller knows)."""
    hits = judge_hits(scorers.judge, protocol, concept, model.images)
    base_hits = judge_hits(scorers.judge, protocol, concept, base.images)
    values = {**accuracy_metrics(hits, protocol), **fidelity_metrics(model, base, scorers, protocol)}
    base_values = accuracy_metrics(base_hits, protocol)
    notes = [f"{name} is uninformative here: the base model itself shows the concept on none of these prompts "
             "(base 0), so a low value is no evidence of erasure"
             for name in ("acc_e", "acc_g") if base_values[name].value == 0]
    if scorers.features is None:
        notes.append(f"fid and kid skipped: judge '{scorers.judge.name}' has no image features; pass --fid-features")
    if scorers.clip is not None:
        values["clip_score"] = clip_metric(model, protocol, scorers.clip)
        base_values["clip_score"] = clip_metric(base, protocol, scorers.clip)
    prompts = protocol.prompts(concept)
    counts = ({side: scorers.judge.class_counts(_flat(s.images["target"])) for side, s in (("model", model),
                                                                                          ("base", base))}
              if hasattr(scorers.judge, "class_counts") else {})
    return Report(
        task=protocol.task, concept=concept, model=model.name, base=base.name, model_hash=model.hash,
        base_hash=base.hash, protocol={"name": protocol.name, "version": protocol.version,
                                       "description": protocol.description},
        protocol_hash=protocol.hash, seeds=list(protocol.seeds),
        config={"sampling": protocol.sampling.model_dump(), "images_per_prompt": protocol.images_per_prompt,
                "bootstrap": protocol.bootstrap.model_dump(), "detect": [c.model_dump() for c in
                                                                         protocol.concept(concept).detect],
                **scorers.describe(), **(config or {})},
        metrics={k: v.as_dict() for k, v in values.items()},
        base_metrics={k: v.as_dict() for k, v in base_values.items()},
        groups={g: _rows(g, prompts[g], hits[g], base_hits[g]) for g in prompts}, class_counts=counts,
        notes=notes, **provenance(), seconds=0.0,
    )


def run_config(protocol: Protocol, protocol_path: Path | None, cache: ImageCache) -> dict:
    """Where the protocol and the images came from, for the report's config."""
    return {"protocol_file": str(protocol_path) if protocol_path else f"packaged:{protocol.task}",
            "cache_dir": str(cache.root) if cache.root else None}
