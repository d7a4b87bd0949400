"""`score evaluate`: sample a model and its base on one protocol concept, judge and score them, write the report."""

from __future__ import annotations

import time
from pathlib import Path

from score_erasure.evaluation.cache import ImageCache, default_cache_dir
from score_erasure.evaluation.evaluate import Sampled, make_scorers, run_config, sample, score_sampled
from score_erasure.evaluation.protocol import resolve_protocol
from score_erasure.evaluation.report import Report, write_report
from score_erasure.io import output_folder, release_folder
from score_erasure.models import load_pair


def evaluate(model: str, concept: str, out: Path, task: str | None = None, base: str | None = None,
             protocol_path: Path | None = None, cache_dir: Path | None = None, use_cache: bool = True,
             fid_features: Path | None = None, clip_model: str | None = None,
             show_progress: bool = True, overwrite: bool = False) -> Report:
    """Evaluate `model` on one protocol concept against `base` (default: its own); writes report.json and
    report.html to `out`."""
    start = time.time()
    out = output_folder(out, "evaluate", overwrite=overwrite)
    protocol = resolve_protocol(task, protocol_path, concept)
    concept = protocol.canonical(concept)  # `-c Star` is the protocol's star
    scorers = make_scorers(protocol, concept, fid_features, clip_model)  # fails before any model is resolved
    pair = load_pair(model, base)
    cache = ImageCache((cache_dir or default_cache_dir()) if use_cache else None)
    base_sampled = sample(pair.base_pipe, pair.base.name, pair.base.hash, protocol, concept, cache, show_progress,
                          floor=True)
    identity = base_sampled.hash if pair.base_pipe is pair.pipe else pair.model.hash
    sampled = (Sampled(model, identity, base_sampled.images) if identity == base_sampled.hash
               else sample(pair.pipe, model, identity, protocol, concept, cache, show_progress))
    config = run_config(protocol, protocol_path, cache)
    report = score_sampled(sampled, base_sampled, protocol, concept, scorers, config)
    report.cache = {"hits": cache.hits, "generated": cache.generated}
    report.seconds = time.time() - start
    write_report(report, sampled.images, base_sampled.images, out)
    release_folder(out)
    return report
