"""SDD (Kim et al. 2023, "Towards Safe Self-Distillation of Text-to-Image Diffusion Models"): the model teaches
itself that the concept means nothing.

    L = || sg(ε_θ(z_t, t, ∅)) - ε_θ(z_t, t, c_s) ||²

The conditional prediction for a removal prompt c_s is pulled onto the model's own (stop-gradient)
unconditional prediction. z_t comes from an EMA teacher θ⁻ sampling the concepts (", ".join of their names,
guidance 3) for a random number of steps; after every step θ⁻ <- m θ⁻ + (1 - m) θ, and the teacher, not the
student, is the erased model. Data-free: no images, anchors or retained prompts.

Defaults are the reference's (1,500 steps, lr 1e-5, EMA 0.999, guidance 3, cross-attention trained), except:
x_t is sampled on the toolkit's 25-step DDIM schedule (the reference: 50) at its timesteps (the reference draws
t inside the step's interval); the removal prompts c_s are the spec's target prompts in turn (the reference:
the concept names); Adam without weight decay or gradient clipping (the shared loop; the reference: AdamW,
weight decay 1e-4, clipping at 1).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from score_erasure import parallel
from score_erasure.methods.loop import Checkpointing, Trace, finetune, trainable
from score_erasure.spec import ConceptSpec


class SDDConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    group: str = "xattn"
    iterations: int = Field(1500, ge=1)
    lr: float = Field(1e-5, gt=0)
    ema: float = Field(0.999, ge=0, lt=1)  # m
    steps: int = Field(25, ge=1)  # DDIM schedule on which z_t is sampled
    guidance: float = 3.0
    seed: int = 0


class Shadow(torch.nn.Module):
    """The EMA weights θ⁻ as buffers (in the student's precision, whatever the teacher copy's), so that the
    loop's checkpoints carry them and a resume restores them in place."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        super().__init__()
        self.names = list(tensors)
        for i, tensor in enumerate(tensors.values()):
            self.register_buffer(f"w{i}", tensor)

    def items(self):
        return ((name, getattr(self, f"w{i}")) for i, name in enumerate(self.names))


def sdd(denoiser, spec: ConceptSpec, cfg: SDDConfig, checkpointing: Checkpointing | None = None,
        show_progress: bool = True) -> Trace:
    teacher = denoiser.frozen_copy()
    params = trainable(denoiser, cfg.group)
    shadow = Shadow({name: p.detach().clone() for name, p in params.items()})
    in_teacher = dict(teacher.network.named_parameters())
    c_s, c_p = denoiser.encode(spec.target_prompts), denoiser.encode([", ".join(spec.concepts)])
    uncond = denoiser.unconditional(1)
    timesteps = denoiser.timesteps(cfg.steps)

    @torch.no_grad()
    def follow() -> None:
        """θ⁻ <- m θ⁻ + (1 - m) θ (before each step, so after every update but the last), into the teacher."""
        for name, w in shadow.items():
            w.lerp_(params[name].detach(), 1 - cfg.ema)
            in_teacher[name].copy_(w)

    def step(k: int):
        follow()
        rng = np.random.default_rng(parallel.step_key(cfg.seed, k))
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        n = int(rng.integers(cfg.steps))
        z_t = teacher.sample(c_p, cfg.steps, until=n, guidance=cfg.guidance, generator=gen)
        c, t = c_s[k % len(c_s)][None], timesteps[n]
        e_uncond, e_cond = denoiser.predict(torch.cat([z_t, z_t]), t, torch.cat([uncond, c])).chunk(2)
        loss = F.mse_loss(e_cond, e_uncond.detach())
        return loss, {"sdd": loss.item()}

    trace = finetune(params, step, cfg.iterations, cfg.lr, label="sdd", checkpointing=checkpointing,
                     extra_modules={"ema": shadow}, show_progress=show_progress)
    follow()
    with torch.no_grad():  # the teacher is the output
        for name, w in shadow.items():
            params[name].copy_(w)
    return trace
