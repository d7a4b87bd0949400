"""Backends: one Denoiser per model family, chosen from the pipeline's type.

diffusers is imported where a pipeline is driven, not at import, so that the registries (and `score methods`)
load without it."""

from __future__ import annotations

from score_erasure.backends.base import FAMILIES, PARAMETER_GROUPS, Denoiser
from score_erasure.backends.flux import FluxDenoiser
from score_erasure.backends.sd import SDDenoiser
from score_erasure.backends.sdxl import SDXLDenoiser
from score_erasure.backends.tokens import TOKEN_FAMILIES, TokenGenerator
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
    if token_generator_of(pipe) is not None:
        raise UserError(f"{type(pipe).__name__} draws images as tokens, not by denoising; this command or method "
                        "supports diffusion models only so far")
    raise UserError(f"no erasure backend for {type(pipe).__name__} yet; supported: StableDiffusionPipeline, "
                    "StableDiffusionXLPipeline, FluxPipeline, and the token pipelines JanusImagePipeline, "
                    "VARImagePipeline and Emu3ImagePipeline")


def token_generator_of(pipe) -> TokenGenerator | None:
    """The token backend of an autoregressive pipeline (one that names its `token_backend` class, as
    JanusImagePipeline does), None for any other."""
    backend = getattr(type(pipe), "token_backend", None)
    return backend(pipe) if backend is not None else None


def backend_for(pipe) -> Denoiser | TokenGenerator:
    """What draws `pipe`'s images: its Denoiser, or its token backend for an autoregressive model (generation and
    evaluation need only `pipeline_inputs`, which both have)."""
    return token_generator_of(pipe) or denoiser_for(pipe)


__all__ = ["FAMILIES", "PARAMETER_GROUPS", "TOKEN_FAMILIES", "Denoiser", "TokenGenerator", "backend_for",
           "denoiser_for", "token_generator_of"]
