"""Erasure methods, found by name. Adding a method is adding a module and one line of `METHODS`.

A method is `fit(denoiser, spec, config, checkpointing=None, show_progress=True)`: it edits the
denoiser's network in place and returns a Trace (or None); the caller turns the change into an
ErasureDelta. Presets are named configs of the same function (`ant` is SCORE without the adversary).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import BaseModel

from score_erasure.errors import UserError, validated_config
from score_erasure.methods import dve as dve_module
from score_erasure.methods.dve import DVEConfig, dve
from score_erasure.methods.esd import ESDConfig, esd
from score_erasure.methods.score import ScoreConfig, score
from score_erasure.methods.score_robust import ScoreRobustConfig, score_robust
from score_erasure.methods.uce import UCEConfig, uce


@dataclass(frozen=True)
class Method:
    name: str
    fit: Callable
    config_class: type[BaseModel]
    preset: dict = field(default_factory=dict)
    summary: str = ""
    edits_weights: bool = True  # False: an inference-time hook (saved in the delta, lost by save_pretrained)

    def config(self, overrides: dict | None = None) -> BaseModel:
        return validated_config(self.config_class, {**self.preset, **(overrides or {})}, self.name)


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("score", score, ScoreConfig, summary="SCORE: adversarial independence + trajectory + saliency"),
    Method("ant", score, ScoreConfig, {"adversarial": False}, "ANT: SCORE without the adversarial term"),
    Method("esd-x", esd, ESDConfig, {"group": "xattn"}, "ESD on cross-attention"),
    Method("esd-u", esd, ESDConfig, {"group": "non-xattn"}, "ESD on everything but cross-attention"),
    Method("esd", esd, ESDConfig, {"group": "xattn", "lora_rank": 4, "lr": 1e-3},
           "ESD as LoRA on the text attention, merged (EraseAnything's form, for FLUX)"),
    Method("uce", uce, UCEConfig, summary="UCE closed-form edit of cross-attention K/V"),
    Method("score-robust", score_robust, ScoreRobustConfig, summary="SCORE + prompts an inner attack finds on the fly"),
    Method("dve", dve, DVEConfig, summary="DVE: training-free projection of the field off the concept direction",
           edits_weights=False),
)}


def restore_hook(name: str, denoiser, tensors: dict, settings: dict) -> None:
    """Re-install an inference-time edit saved in a delta (`ErasureDelta.hooks`)."""
    if name != dve_module.DifferentialProjection.name:
        raise UserError(f"this delta needs the '{name}' hook, which this version does not know; upgrade score-erasure")
    dve_module.install(denoiser, tensors["concept"], tensors["anchor"], **settings)


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise UserError(f"unknown method '{name}'; choose one of: {', '.join(METHODS)}")
    return METHODS[name]


def eraser(name: str, overrides: dict | None = None) -> Callable:
    """`name` with its config overridden, as `score bench` runs it: (pipe, ErasureRequest) -> erased pipe."""
    config = get_method(name).config(overrides)  # a bad override fails here, before the bench starts

    def erase_for_bench(pipe, request):
        from score_erasure.backends import denoiser_for
        from score_erasure.spec import build_spec

        method, denoiser = get_method(name), denoiser_for(pipe)
        method.fit(denoiser, build_spec(request.model, [request.concept]), config, show_progress=False)
        denoiser.network.requires_grad_(False)
        return pipe

    return erase_for_bench


# The table `score bench` reads: name -> (pipe, ErasureRequest) -> erased pipe.
ERASERS: dict[str, Callable] = {name: eraser(name) for name in METHODS}
