"""`score certify`: the leakage certificate of a model against its base, from names and attack folders."""

from __future__ import annotations

import time
from pathlib import Path

from score_erasure.certify.certificate import CertifyConfig, certify_pipelines, features_judge
from score_erasure.certify.report import CertificateReport
from score_erasure.errors import UserError, validated_config
from score_erasure.evaluation.cache import ImageCache, default_cache_dir
from score_erasure.evaluation.protocol import resolve_protocol
from score_erasure.io import output_folder, release_folder
from score_erasure.models import load_pair


def certify(model: str, concept: str, out: Path, task: str | None = None, base: str | None = None,
            protocol_path: Path | None = None, attack_folders: list[Path] | None = None,
            overrides: dict | None = None, overwrite: bool = False, cache_dir: Path | None = None,
            use_cache: bool = True) -> CertificateReport:
    """Estimate the model's and the base's leakage of `concept`; writes report.json and report.html to `out`.
    The base's images are cached (`cache_dir`, default $SCORE_CACHE) unless `use_cache` is False."""
    start = time.time()
    out = output_folder(out, "certify", overwrite=overwrite)
    cfg = validated_config(CertifyConfig, dict(overrides or {}), "certify")
    protocol = resolve_protocol(task, protocol_path, concept)
    concept = protocol.canonical(concept)  # `-c Star` is the protocol's star
    for folder in attack_folders or []:
        if not any((Path(folder) / "prompts").glob("*.safetensors")):
            raise UserError(f"'{folder}' holds no attack results (prompts/*.safetensors); pass a `score attack` "
                            "output folder")
    judge = features_judge(protocol)  # before the models: a user error should come at once
    pair = load_pair(model, base)
    report = certify_pipelines(pair.pipe, pair.base_pipe, (model, pair.base.name), (pair.model.hash, pair.base.hash),
                               concept, protocol, pair.spec(concept), list(attack_folders or []), cfg, out, start,
                               judge, ImageCache((cache_dir or default_cache_dir()) if use_cache else None))
    release_folder(out)
    return report
