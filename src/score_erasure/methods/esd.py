"""ESD (Gandikota et al. 2023): fine-tune the model against its own negative guidance.

    L = || eps_theta(x_t, t, c) - [ eps_0(x_t, t, ∅) - eta (eps_0(x_t, t, c) - eps_0(x_t, t, ∅)) ] ||^2

x_t is reached by sampling the model being trained on the concept prompt c for a random number of
sampler steps. ESD-x trains cross-attention (a prompt-specific erasure), ESD-u everything else (global).
On a flow model the same target is a velocity (affine in the noise, so the guidance algebra holds), and `esd`
trains LoRA adapters (EraseAnything's recipe for FLUX) that are merged into the weights at the end.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from score_erasure import parallel
from score_erasure.methods.loop import Checkpointing, Trace, finetune, lora_trainable, merge_lora, trainable
from score_erasure.spec import ConceptSpec


class ESDConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    group: str = "non-xattn"
    iterations: int = 200
    lr: float = 1e-4
    eta: float = 1.0  # negative-guidance scale
    steps: int = 25  # DDIM schedule on which x_t is sampled
    start_guidance: float = 3.0
    lora_rank: int = Field(0, ge=0)  # > 0: train rank-r LoRA adapters on the group instead of its weights
    seed: int = 0


def esd(denoiser, spec: ConceptSpec, cfg: ESDConfig, checkpointing: Checkpointing | None = None,
        show_progress: bool = True) -> Trace:
    eps_0 = denoiser.frozen_copy()
    params = (lora_trainable(denoiser, cfg.group, cfg.lora_rank, cfg.seed) if cfg.lora_rank
              else trainable(denoiser, cfg.group))
    c = denoiser.encode(spec.target_prompts)
    uncond = denoiser.unconditional(1)
    timesteps = denoiser.timesteps(cfg.steps)

    def step(k: int):
        rng = np.random.default_rng(parallel.step_key(cfg.seed, k))
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        i, n = int(rng.integers(len(c))), int(rng.integers(cfg.steps))
        c_i, t = c[i:i + 1], timesteps[n]
        x_t = denoiser.sample(c_i, cfg.steps, until=n, guidance=cfg.start_guidance, generator=gen)
        with torch.no_grad():
            e_uncond, e_cond = eps_0.predict(torch.cat([x_t, x_t]), t, torch.cat([uncond, c_i])).chunk(2)
            target = e_uncond - cfg.eta * (e_cond - e_uncond)
        loss = F.mse_loss(denoiser.predict(x_t, t, c_i), target)
        return loss, {"esd": loss.item()}

    trace = finetune(params, step, cfg.iterations, cfg.lr, label=f"esd ({cfg.group})", checkpointing=checkpointing,
                     show_progress=show_progress)
    if cfg.lora_rank:
        merge_lora(denoiser.network)
    return trace
