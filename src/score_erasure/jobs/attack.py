"""`score attack`: run one attack on every prompt, draw and judge the images, report ASR beside the
unattacked rate.

ASR is the fraction of the attacked prompts' images (every protocol seed of every prompt) in which the judge
sees the concept; `pre_asr` is the same on the protocol's target prompts without the attack; `best_of_asr`
counts an image when the unattacked or the found prompt shows the concept at that seed (UnlearnDiffAtk's
convention: an attacker keeps the original prompt where it works). All carry bootstrap intervals.

Each prompt's result (tokens, free vectors, verdicts, its image strip) is written atomically under prompts/
as soon as it is done; a rerun with the same settings skips those prompts.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from score_erasure.attacks import Attack, AttackContext, FoundPrompt, get_attack
from score_erasure.attacks.report import AttackReport, AttackRow, PreRow, write_attack_report
from score_erasure.backends import backend_for
from score_erasure.evaluation import metrics
from score_erasure.evaluation.cache import ImageCache, default_cache_dir, use_sampler
from score_erasure.evaluation.judges import ConceptJudge, load_judge
from score_erasure.evaluation.protocol import Protocol, resolve_protocol
from score_erasure.generate import generate
from score_erasure.io import load_tensors, output_folder, release_folder, save_tensors
from score_erasure.models import load_pair
from score_erasure.progress import progress_bar
from score_erasure.provenance import provenance
from score_erasure.reporting import save_strip


@dataclass
class Subject:
    """The model under attack and its base: pipelines, names, and the content hashes that key resumed results."""

    pipe: object
    base_pipe: object
    name: str
    base_name: str
    identity: str
    base_identity: str


@dataclass
class PromptResult:
    prompt: str
    adversarial: str
    exact_text: bool
    hits: np.ndarray  # bool (seeds,)
    seconds: float
    final_objective: float | None
    resumed: bool


def _key(attack: Attack, cfg, subject: Subject, protocol: Protocol, concept: str, index: int, prompt: str) -> str:
    record = {"attack": attack.name, "config": cfg.model_dump(mode="json"), "model": subject.identity,
              "base": subject.base_identity, "prompt": prompt, "index": index,
              "sampling": protocol.sampling.model_dump(), "seeds": list(protocol.seeds),
              "detect": [c.model_dump() for c in protocol.concept(concept).detect]}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _draw(subject: Subject, found: FoundPrompt, denoiser, protocol: Protocol) -> np.ndarray:
    """The attacked model's images of a found prompt, one per protocol seed, through the pipeline."""
    use_sampler(subject.pipe, protocol.sampling.sampler)
    return generate(subject.pipe, [found.adversarial], list(protocol.seeds), steps=protocol.sampling.steps,
                    guidance=protocol.sampling.guidance, show_progress=False,
                    prompt_embeds=found.condition(denoiser))[0]


def _attack_prompt(attack: Attack, cfg, ctx: AttackContext, subject: Subject, protocol: Protocol, judge,
                   index: int, prompt: str, key: str, out: Path) -> PromptResult:
    start = time.time()
    found = attack.run(ctx, prompt, index, cfg)
    images = _draw(subject, found, ctx.denoiser, protocol)
    hits = judge.check(images, ctx.detect)
    seconds = time.time() - start
    save_strip(images, out / "images" / f"{index:03d}.png")
    final = found.trace[-1] if found.trace else None
    save_tensors({**found.tensors(), "hits": torch.from_numpy(hits.astype(np.uint8))},
                 out / "prompts" / f"{index:03d}.safetensors",
                 {"key": key, "prompt": prompt, "adversarial": found.adversarial, "exact_text": found.exact_text,
                  "seconds": seconds, "trace": found.trace, "final_objective": final, "attack": attack.name})
    return PromptResult(prompt, found.adversarial, found.exact_text, hits, seconds, final, resumed=False)


def _resumed(path: Path, key: str) -> PromptResult | None:
    if not path.is_file():
        return None
    try:
        tensors, meta = load_tensors(path)
    except Exception:  # a damaged file: attack the prompt again
        return None
    if meta.get("key") != key:
        return None
    return PromptResult(meta["prompt"], meta["adversarial"], meta["exact_text"], tensors["hits"].numpy().astype(bool),
                        meta["seconds"], meta.get("final_objective"), resumed=True)


def _unattacked(subject: Subject, protocol: Protocol, prompts: list[str], judge, detect, cache: ImageCache,
                out: Path) -> tuple[np.ndarray, list[PreRow]]:
    """The target prompts' images without the attack, judged: hits (P, S) and one report row per prompt."""
    images = cache.images(subject.pipe, subject.identity, protocol.sampling, prompts, list(protocol.seeds),
                          show_progress=False)
    hits = judge.check(images.reshape(-1, *images.shape[2:]), detect).reshape(images.shape[:2])
    rows = []
    for i, prompt in enumerate(prompts):
        save_strip(images[i], out / "images" / f"pre-{i:03d}.png")
        rows.append(PreRow(prompt=prompt, rate=float(hits[i].mean()), image=f"images/pre-{i:03d}.png"))
    return hits, rows


def _drop_stale(out: Path, count: int) -> None:
    """Remove prompt results beyond this run's prompts (left by a run with more of them), so that the folder
    holds exactly what the report describes."""
    for path in (out / "prompts").glob("*.safetensors"):
        if path.stem.isdigit() and int(path.stem) >= count:
            path.unlink()
            (out / "images" / f"{path.stem}.png").unlink(missing_ok=True)


def attack_pipeline(subject: Subject, attack: Attack, cfg, protocol: Protocol, concept: str, out: Path, *,
                    judge: ConceptJudge, spec, compositional: list[str], cache: ImageCache, resume: bool = True,
                    show_progress: bool = True, base_draws: dict | None = None) -> AttackReport:
    """Attack an in-memory pipeline (what `score attack` and `score bench --attacks` share). `base_draws`: the
    base's target draws kept across calls with the same base pipeline, protocol and judge (a bench's rows)."""
    start, out = time.time(), Path(out)
    groups, detect = protocol.prompts(concept), protocol.concept(concept).detect
    denoiser, base = backend_for(subject.pipe), backend_for(subject.base_pipe)
    for d in (denoiser, base):  # attacks optimise prompts, never weights
        d.network.requires_grad_(False)
        d.text_encoder.requires_grad_(False)
    ctx = AttackContext(denoiser, base, judge, detect, protocol.sampling, spec, groups["target"],
                        groups["generality"], compositional, base_draws=base_draws if base_draws is not None else {})
    pre_hits, pre_rows = _unattacked(subject, protocol, groups["target"], judge, detect, cache, out)
    pre_of = {row.prompt: (i, row) for i, row in enumerate(pre_rows)}

    prompts = attack.prompts(ctx, cfg)
    results: list[PromptResult] = []
    with progress_bar() as bar:
        task = bar.add_task(attack.name, total=len(prompts), info="", visible=show_progress)
        for i, prompt in enumerate(prompts):
            key = _key(attack, cfg, subject, protocol, concept, i, prompt)
            done = _resumed(out / "prompts" / f"{i:03d}.safetensors", key) if resume else None
            results.append(done or _attack_prompt(attack, cfg, ctx, subject, protocol, judge, i, prompt, key, out))
            bar.update(task, advance=1, info=f"hit rate {results[-1].hits.mean():.2f}")
    _drop_stale(out, len(prompts))

    paired = all(r.prompt in pre_of for r in results)
    best_of = np.stack([r.hits | pre_hits[pre_of[r.prompt][0]] for r in results]) if paired else None
    rows = [AttackRow(prompt=r.prompt, adversarial=r.adversarial, exact_text=r.exact_text, rate=float(r.hits.mean()),
                      pre_rate=pre_of[r.prompt][1].rate if r.prompt in pre_of else None,
                      pre_image=pre_of[r.prompt][1].image if r.prompt in pre_of else None,
                      image=f"images/{i:03d}.png", seconds=r.seconds, final_objective=r.final_objective)
            for i, r in enumerate(results)]
    boot = protocol.bootstrap
    report = AttackReport(
        attack=attack.name, task=protocol.task, concept=concept, model=subject.name, base=subject.base_name,
        model_hash=subject.identity, base_hash=subject.base_identity,
        protocol={"name": protocol.name, "version": protocol.version}, protocol_hash=protocol.hash,
        seeds=list(protocol.seeds),
        config={**cfg.model_dump(mode="json"), "judge": judge.describe(), "sampling": protocol.sampling.model_dump()},
        budget={**cfg.budget(), "prompts": len(prompts), "images_per_prompt": len(protocol.seeds)},
        asr=metrics.mean_interval(np.stack([r.hits for r in results]), boot).as_dict(),
        pre_asr=metrics.mean_interval(pre_hits, boot).as_dict(),
        best_of_asr=metrics.mean_interval(best_of, boot).as_dict() if paired else None,
        rows=rows, pre_rows=pre_rows, resumed=sum(r.resumed for r in results), **provenance(),
        seconds=time.time() - start, attack_seconds=sum(r.seconds for r in results))
    write_attack_report(report, out)
    return report


def run_attack(model: str, attack: str, concept: str, out: Path, task: str | None = None, base: str | None = None,
               protocol_path: Path | None = None, overrides: dict | None = None, cache_dir: Path | None = None,
               use_cache: bool = True, resume: bool | None = None, show_progress: bool = True,
               overwrite: bool = False) -> AttackReport:
    """Attack `model` (erased from `base`) on one protocol concept; writes everything into `out`. The prompts an
    unfinished run into `out` attacked with the same settings are kept unless `resume` is False; a finished run
    there is refused unless `resume` (its prompts kept, the report redone) or `overwrite`."""
    out = output_folder(out, "attack", resume=bool(resume), overwrite=overwrite or resume is False)
    entry = get_attack(attack)
    cfg = entry.config(overrides)
    protocol = resolve_protocol(task, protocol_path, concept)
    concept = protocol.canonical(concept)  # `-c Star` is the protocol's star
    judge = load_judge(protocol.judge)
    judge.validate(protocol.concept(concept).detect)  # fails before any model is resolved
    pair = load_pair(model, base)
    subject = Subject(pair.pipe, pair.base_pipe, model, pair.base.name, pair.model.hash, pair.base.hash)
    cache = ImageCache((cache_dir or default_cache_dir()) if use_cache else None)
    report = attack_pipeline(subject, entry, cfg, protocol, concept, out, judge=judge, spec=pair.spec(concept),
                             compositional=pair.compositional_prompts(concept), cache=cache,
                             resume=resume is True or (resume is None and not overwrite),
                             show_progress=show_progress)
    release_folder(out)
    return report
