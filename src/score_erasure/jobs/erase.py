"""`score erase`: run a method on a model and write its ErasureDelta and a record of the run.

Output folder: delta.safetensors (only the changed tensors), erase.json (method, concepts, config,
seconds, peak RSS, the loss/MI trace, provenance), checkpoint.safetensors while training, and with
`save_pipeline` (`--merge`) a full diffusers pipeline in pipeline/. The folder itself is accepted wherever
`--model` is.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from score_erasure import parallel
from score_erasure.backends import backend_for
from score_erasure.delta import ErasureDelta, editable_parameters, installed_hooks
from score_erasure.errors import UserError
from score_erasure.io import atomic_write_json, load_metadata, output_folder, release_folder
from score_erasure.methods import get_method
from score_erasure.methods.loop import Checkpointing, Trace
from score_erasure.models import ModelRef, resolve_model
from score_erasure.provenance import hash_files, peak_rss_mb, provenance
from score_erasure.spec import ConceptSpec


def erase(model: str | ModelRef, method_name: str, spec: ConceptSpec, out: Path, overrides: dict | None = None,
          resume: bool = False, save_pipeline: bool = False, checkpoint_every: int = 50,
          show_progress: bool = True, overwrite: bool = False) -> ErasureDelta:
    """Run `method_name` on `model` and write its delta and erase.json into `out`. A folder holding another run is
    refused unless `overwrite`; `resume` continues this same erasure (method, concepts, config, base) from its
    checkpoint, and refuses one of another."""
    model = resolve_model(model) if isinstance(model, str) else model
    method = get_method(method_name)
    cfg = method.config(overrides)
    if save_pipeline and not method.edits_weights:
        raise UserError(f"'{method_name}' edits the model at inference time: there are no weights to merge; "
                        "drop --merge and pass the erase folder itself as --model")
    out = output_folder(out, "erase", resume=resume, overwrite=overwrite)
    # what a resumed run must share with the one it continues; more iterations may be asked for
    run = {"method": method_name, "concepts": spec.concepts, "base_hash": model.hash,
           "config": {k: v for k, v in cfg.model_dump(mode="json").items() if k != "iterations"}}
    if resume:
        _require_same_run(out, run)
    torch.manual_seed(getattr(cfg, "seed", 0))
    pipe = model.load()
    denoiser = backend_for(pipe)  # a TokenGenerator for an autoregressive model
    method.check_supports(denoiser)
    editable = (denoiser.network_attr, method.components(denoiser))
    before = {k: v.detach().clone() for k, v in editable_parameters(pipe, *editable).items()}
    start = time.time()
    trace = method.fit(denoiser, spec, cfg, checkpointing=Checkpointing(out / "checkpoint.safetensors",
                                                                          checkpoint_every, resume, run),
                       show_progress=show_progress) or Trace()
    seconds = time.time() - start
    denoiser.network.requires_grad_(False)
    after = editable_parameters(pipe, *editable)
    delta = ErasureDelta.from_changes(before, after, hooks=installed_hooks(denoiser.network), method=method_name,
                                      concepts=spec.concepts,
                                      base_model=model.id, base_hash=model.hash,
                                      network=denoiser.network_attr, config=cfg.model_dump(),
                                      extra={"seconds": seconds, **trace.info})
    delta.save(out / "delta.safetensors")
    # the file's hash: a folder whose delta was edited, truncated or swapped is refused when it is loaded
    delta_hash = hash_files([out / "delta.safetensors"]) if parallel.is_main() else None
    record = provenance(method=method_name, concepts=spec.concepts, base_model=delta.base_model,
                        base_hash=delta.base_hash, delta_hash=delta_hash, config=cfg.model_dump(),
                        spec=spec.model_dump(),
                        seconds=seconds, peak_rss_mb=peak_rss_mb(), changed_tensors=len(delta.tensors),
                        changed_parameters=sum(t.numel() for t in delta.tensors.values()),
                        mi_trace=trace.series("mi"), trace=trace.rows, info=trace.info)
    if save_pipeline:
        pipe.save_pretrained(out / "pipeline")
        record["merged"] = str(out / "pipeline")
    atomic_write_json(out / "erase.json", record)
    parallel.barrier()  # the other processes return once the main process has written the outputs
    release_folder(out)
    return delta


def _require_same_run(out: Path, run: dict) -> None:
    """`--resume` continues the erasure its folder holds (to more iterations if asked); another method, concept,
    config or base would start from a checkpoint that is not its own, or keep a delta that was not asked for."""
    for name, recorded in (("checkpoint.safetensors", _checkpoint_run(out / "checkpoint.safetensors")),
                           ("erase.json", _record_run(out / "erase.json"))):
        if recorded is not None and recorded != run:
            differs = ", ".join(k for k in run if recorded.get(k) != run[k])
            release_folder(out)
            raise UserError(f"'{out}' holds another erasure ({name}: its {differs} differ from this command's); "
                            "pass --overwrite to replace it, or choose another --out")


def _checkpoint_run(path: Path) -> dict | None:
    return load_metadata(path).get("run") if path.is_file() else None  # None: from before checkpoints named a run


def _record_run(path: Path) -> dict | None:
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return {"method": record.get("method"), "concepts": record.get("concepts"), "base_hash": record.get("base_hash"),
            "config": {k: v for k, v in (record.get("config") or {}).items() if k != "iterations"}}
