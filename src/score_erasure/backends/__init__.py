"""Backends: one Denoiser per model family, chosen from the pipeline's type."""

from __future__ import annotations

from score_erasure.backends.base import GROUPS, Denoiser
from score_erasure.errors import UserError


def denoiser_for(pipe) -> Denoiser:
    """The Denoiser that drives `pipe`: SD1.x/2.x (and the embedded model), SDXL, or FLUX."""
    from diffusers import FluxPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    if isinstance(pipe, StableDiffusionXLPipeline):
        from score_erasure.backends.sdxl import SDXLDenoiser

        return SDXLDenoiser(pipe)
    if isinstance(pipe, StableDiffusionPipeline):
        from score_erasure.backends.sd import SDDenoiser

        return SDDenoiser(pipe)
    if isinstance(pipe, FluxPipeline):
        from score_erasure.backends.flux import FluxDenoiser

        return FluxDenoiser(pipe)
    raise UserError(f"no erasure backend for {type(pipe).__name__} yet; supported: StableDiffusionPipeline, "
                    "StableDiffusionXLPipeline, FluxPipeline")


__all__ = ["GROUPS", "Denoiser", "denoiser_for"]
