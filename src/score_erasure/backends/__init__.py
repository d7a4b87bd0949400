"""Backends: one Denoiser per model family, chosen from the pipeline's type.

diffusers is imported where a pipeline is driven, not at import, so that the registries (and `score methods`)
load without it."""

from __future__ import annotations

from score_erasure.backends.base import FAMILIES, PARAMETER_GROUPS, Denoiser
from score_erasure.backends.flux import FluxDenoiser
from score_erasure.backends.sd import SDDenoiser
from score_erasure.backends.sdxl import SDXLDenoiser
from score_erasure.errors import UserError


def denoiser_for(pipe) -> Denoiser:
    """The Denoiser that drives `pipe`: SD1.x/2.x (and the embedded model), SDXL, or FLUX."""
    from diffusers import FluxPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    if isinstance(pipe, StableDiffusionXLPipeline):
        return SDXLDenoiser(pipe)
    if isinstance(pipe, StableDiffusionPipeline):
        return SDDenoiser(pipe)
    if isinstance(pipe, FluxPipeline):
        return FluxDenoiser(pipe)
    raise UserError(f"no erasure backend for {type(pipe).__name__} yet; supported: StableDiffusionPipeline, "
                    "StableDiffusionXLPipeline, FluxPipeline")


__all__ = ["FAMILIES", "PARAMETER_GROUPS", "Denoiser", "denoiser_for"]
