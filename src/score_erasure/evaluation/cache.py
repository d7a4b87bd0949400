"""Generated images cached on disk as PNG, keyed by (model hash, sampling settings, prompt, seed).

A rerun, a second model against the same base, or a bench of several methods generates each base image
once. The key holds what decides the pixels: the model hash (`ModelRef.hash`), the sampler, steps and guidance
(every protocol field that changes images, and nothing else: editing a protocol's prompt list invalidates
only the prompts it changed), the device, torch's thread count and CPU kernel level (images drawn with one
thread differ in their last bits from those drawn with two: a cache shared by runs of both would mix them),
the prompt and the seed. PNG is lossless, so a cached image is the image.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from score_erasure import parallel
from score_erasure.evaluation.protocol import Sampling
from score_erasure.generate import generate
from score_erasure.io import atomic_write
from score_erasure.options import OPTIONS
from score_erasure.provenance import compute

CACHE_FORMAT = 1
CACHE_ENV = "SCORE_CACHE"


def default_cache_dir() -> Path:
    """$SCORE_CACHE, else $XDG_CACHE_HOME/score-erasure/images, else ~/.cache/score-erasure/images."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "score-erasure" / "images"


SCHEDULERS = {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler", "dpmsolver": "DPMSolverMultistepScheduler"}


def use_sampler(pipe, sampler: str) -> None:
    """Give `pipe` the protocol's sampler, keeping its scheduler config (schedule, prediction type, spacing).
    A flow model (FLUX) keeps its own flow-matching Euler scheduler: the protocol's diffusion samplers do not
    apply to a velocity field; an autoregressive model has no scheduler."""
    import diffusers

    if not hasattr(pipe, "scheduler") or type(pipe.scheduler).__name__.startswith("FlowMatch"):
        return
    name = SCHEDULERS[sampler]
    if type(pipe.scheduler).__name__ != name:
        pipe.scheduler = getattr(diffusers, name).from_config(pipe.scheduler.config)


def sampling_key(sampling: Sampling) -> str:
    """The sampling settings and what computes them (device, threads, CPU kernels), hashed."""
    computed_by = {**compute(), "device": OPTIONS.torch_device().type}
    return hashlib.sha256(json.dumps({"format": CACHE_FORMAT, **sampling.model_dump(), "computed_by": computed_by},
                                     sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class ImageCache:
    """PNG files under `root`; `root=None` disables caching (every image is generated)."""

    root: Path | None
    hits: int = 0
    generated: int = 0

    def _path(self, model_hash: str, sampling: Sampling, prompt: str, seed: int) -> Path:
        prompt_key = hashlib.sha256(prompt.encode()).hexdigest()[:20]
        return self.root / model_hash[:24] / sampling_key(sampling) / prompt_key / f"seed{seed}.png"

    def load(self, model_hash: str, sampling: Sampling, prompt: str, seed: int) -> np.ndarray | None:
        if self.root is None:
            return None
        path = self._path(model_hash, sampling, prompt, seed)
        if not path.is_file():
            return None
        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))
        except OSError:  # a truncated file from an interrupted run: regenerate it
            return None

    def store(self, model_hash: str, sampling: Sampling, prompt: str, seed: int, image: np.ndarray) -> None:
        if self.root is None:
            return
        path = self._path(model_hash, sampling, prompt, seed)
        atomic_write(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))
        note = path.parent / "prompt.txt"  # for people browsing the cache
        if not note.exists() and parallel.is_main():
            note.write_text(prompt + "\n")

    def images(self, pipe, model_hash: str, sampling: Sampling, prompts: list[str], seeds: list[int],
               show_progress: bool = True, prompt_seeds: dict[str, tuple[int, ...]] | None = None) -> np.ndarray:
        """uint8 (P, S, H, W, 3) for every prompt and seed (a prompt's own seeds where `prompt_seeds` has them):
        cached where possible, the rest generated in batches (prompts missing the same seeds are generated
        together) and stored."""
        use_sampler(pipe, sampling.sampler)
        parallel.barrier()  # every process sees the cache as the main process last left it: same work, no deadlock
        seeds_of = {p: list((prompt_seeds or {}).get(p, seeds)) for p in prompts}
        found = {(p, s): self.load(model_hash, sampling, p, s) for p in prompts for s in seeds_of[p]}
        missing: dict[tuple[int, ...], list[str]] = {}
        for p in dict.fromkeys(prompts):
            lacking = tuple(s for s in seeds_of[p] if found[(p, s)] is None)
            if lacking:
                missing.setdefault(lacking, []).append(p)
        self.hits += sum(v is not None for v in found.values())
        for lacking, group in missing.items():
            fresh = generate(pipe, group, list(lacking), steps=sampling.steps, guidance=sampling.guidance,
                             show_progress=show_progress)
            for i, p in enumerate(group):
                for j, s in enumerate(lacking):
                    found[(p, s)] = fresh[i, j]
                    self.store(model_hash, sampling, p, s, fresh[i, j])
            self.generated += fresh.shape[0] * fresh.shape[1]
        return np.stack([np.stack([found[(p, s)] for s in seeds_of[p]]) for p in prompts])
