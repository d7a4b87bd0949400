"""DVE (Differential Vector Erasure, Zhang et al. 2026): training-free erasure at inference time.

For every prediction v = v(x_t, t, y) the network makes, whatever the prompt y:

    d  = mean_i [ v(x_t, t, c_i) - v(x_t, t, a_i) ]          the concept's differential direction at (x_t, t)
    v' = v - s * max(0, <v, d> / ||d||^2) * d                  its component along d removed (when positive)

c_i are concept prompts and a_i their matched anchors ("a star" / "a shape"): d points from what the anchor
would draw to what the concept adds, at this very x_t and t. No weight changes; the edit is a forward hook on
the network, stored in the delta as the conditionings it needs (a few KB) and re-installed on load. Each
network call costs 1 + 2 * pairs evaluations. Written for flow models (velocity), it applies unchanged to
epsilon and v prediction, which are affine in the noise as well.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from score_erasure.delta import attach_hook
from score_erasure.spec import ConceptSpec


class DVEConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    strength: float = Field(1.0, ge=0)  # s: 1 removes the whole positive component along d
    pairs: int = Field(1, ge=1)  # concept/anchor prompt pairs averaged into d


class DifferentialProjection:
    """The forward hook: recomputes the network at the concept and anchor conditionings and projects."""

    name = "dve"

    def __init__(self, denoiser, concept: torch.Tensor, anchor: torch.Tensor, strength: float):
        self.recondition = denoiser.recondition
        self.concept, self.anchor, self.strength = concept, anchor, strength
        self.inside = False  # the hook's own network calls must not be projected again

    def _call(self, module, args, kwargs, cond: torch.Tensor, batch: int) -> torch.Tensor:
        weight = next(module.parameters())  # the pipeline may have moved or changed precision since the hook was made
        cond = cond.to(weight.device, weight.dtype)
        out = module(*args, **self.recondition(kwargs, cond.expand(batch, *cond.shape[1:])))
        return out[0] if isinstance(out, tuple) else out.sample

    def __call__(self, module, args, kwargs, output):
        if self.inside:
            return output
        v = output[0] if isinstance(output, tuple) else output.sample
        self.inside = True
        try:
            with torch.no_grad():
                d = torch.stack([self._call(module, args, kwargs, c[None], len(v))
                                 - self._call(module, args, kwargs, a[None], len(v))
                                 for c, a in zip(self.concept, self.anchor, strict=True)]).mean(0)
        finally:
            self.inside = False
        flat_v, flat_d = v.flatten(1), d.flatten(1)
        coefficient = ((flat_v * flat_d).sum(1) / flat_d.pow(2).sum(1).clamp(min=1e-12)).clamp(min=0)
        edited = v - self.strength * coefficient.view(-1, *[1] * (v.ndim - 1)) * d
        if isinstance(output, tuple):
            return (edited, *output[1:])
        output.sample = edited
        return output

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"concept": self.concept, "anchor": self.anchor}

    def config(self) -> dict:
        return {"strength": self.strength}


    def __deepcopy__(self, memo):  # a frozen copy of the network shares the (read-only) conditionings
        twin = object.__new__(DifferentialProjection)
        twin.__dict__.update(self.__dict__, inside=False)
        return twin


def install(denoiser, concept: torch.Tensor, anchor: torch.Tensor, strength: float) -> DifferentialProjection:
    """Attach the projection to the denoiser's network (and so to its pipeline), where the delta finds it."""
    hook = DifferentialProjection(denoiser, concept.detach(), anchor.detach(), strength)
    attach_hook(denoiser.network, hook, before=False)
    return hook


def restore(denoiser, tensors: dict[str, torch.Tensor], settings: dict) -> None:
    """Re-install the projection saved in a delta (its `concept` and `anchor` conditionings, its settings)."""
    install(denoiser, tensors["concept"], tensors["anchor"], **settings)


def dve(denoiser, spec: ConceptSpec, cfg: DVEConfig, **_) -> None:
    concepts = spec.target_prompts[:cfg.pairs]
    anchors = (spec.anchor_prompts or [""] * len(concepts))[:len(concepts)]
    concepts = concepts[:len(anchors)]
    install(denoiser, denoiser.encode(concepts), denoiser.encode(anchors), cfg.strength)
