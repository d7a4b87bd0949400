"""Backends: one Denoiser per model family, chosen from the pipeline's type."""

from __future__ import annotations

from score_erasure.backends.base import GROUPS, Denoiser
from score_erasure.errors import UserError


def denoiser_for(pipe) -> Denoiser:
    """The Denoiser that drives `pipe` (Stable Diffusion family for now)."""
    from diffusers import StableDiffusionPipeline

    from score_erasure.backends.sd import SDDenoiser

    if isinstance(pipe, StableDiffusionPipeline):
        return SDDenoiser(pipe)
    raise UserError(f"no erasure backend for {type(pipe).__name__} yet; supported: StableDiffusionPipeline")


__all__ = ["GROUPS", "Denoiser", "denoiser_for"]
