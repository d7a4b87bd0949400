"""SalUn (Fan et al., ICLR 2024), its text-to-image part: unlearn with the weights that matter most for the concept.

Saliency mask, from the base model's own images x of the concept prompts c_f (noise ε, time t):

    g = Σ ∇_θ [ -|| ε - ((1 + w) ε_θ(x_t, c_f) - w ε_θ(x_t, ∅)) ||² ]      m = 1 on the top `keep` of |g|, ranked
                                                                            over every weight of the network at once

then only the masked weights are trained (θ <- θ - lr · Adam(m ⊙ ∇L)) to remap the concept onto a pseudo-label
prompt c' on the same noisy image, with the denoising loss on retained images:

    L = || ε_θ(x_t, c_f) - sg(ε_θ(x_t, c')) ||² + α L_DM(x^r, c_r)

Defaults are the reference's for NSFW removal (w 7.5, keep 0.5, lr 1e-5, batch 8, α 0.1, one epoch over 800
forget images: 100 steps). Ours: the pseudo-label of each target prompt is its anchor (the reference: "a
photo of a person wearing clothes"); the forget and retained images are the base model's samples of the target
and retained prompts (the anchors when there are none), drawn here at the toolkit's sampling settings (25 DDIM
steps, guidance 3); the mask's gradient is summed over the whole forget set in batches; t is drawn uniformly
from the model's training schedule.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from score_erasure import parallel
from score_erasure.methods.loop import Checkpointing, Trace, finetune, trainable
from score_erasure.progress import progress_bar
from score_erasure.spec import ConceptSpec


class SalUnConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    group: str = "full"
    iterations: int = Field(100, ge=1)
    lr: float = Field(1e-5, gt=0)
    batch: int = Field(8, ge=1)
    alpha: float = Field(0.1, ge=0)  # α: weight of the retained images' denoising loss
    keep: float = Field(0.5, gt=0, le=1)  # the mask's share of the weights
    mask_guidance: float = 7.5  # w
    images: int = Field(800, ge=1)  # per set: forget and retained
    steps: int = Field(25, ge=1)  # sampling steps of those images
    guidance: float = 3.0
    chunk: int = Field(64, ge=1)  # images sampled at once
    seed: int = 0


@torch.no_grad()
def samples(denoiser, cond: torch.Tensor, cfg: SalUnConfig, seed: int, label: str, show_progress: bool
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """`cfg.images` base-model latents cycling over the rows of `cond`, with the index of each one's row."""
    which = torch.arange(cfg.images) % len(cond)
    out = []
    with progress_bar(transient=True) as bar:
        task = bar.add_task(label, total=cfg.images, info="", visible=show_progress)
        for k, rows in enumerate(which.split(cfg.chunk)):
            generator = torch.Generator().manual_seed(seed + k)
            out.append(denoiser.sample(cond[rows], cfg.steps, guidance=cfg.guidance, generator=generator))
            bar.update(task, advance=len(rows))
    return torch.cat(out), which


def global_top(scores: dict[str, torch.Tensor], keep: float) -> dict[str, torch.Tensor]:
    """Binary masks that keep the `keep` share of all entries with the largest scores, ranked across tensors."""
    flat = torch.cat([s.flatten().float() for s in scores.values()])
    drop = int(round((1 - keep) * flat.numel()))
    threshold = flat.kthvalue(drop).values if drop > 0 else flat.min() - 1
    return {k: (s.float() > threshold).to(s.dtype) for k, s in scores.items()}


def salun(denoiser, spec: ConceptSpec, cfg: SalUnConfig, checkpointing: Checkpointing | None = None,
          show_progress: bool = True) -> Trace:
    params = trainable(denoiser, cfg.group)
    c_f, c_pseudo = denoiser.encode(spec.target_prompts), denoiser.encode(spec.anchor_prompts)
    c_r = denoiser.encode(spec.retain_prompts or spec.anchor_prompts)
    uncond = denoiser.unconditional(1)
    x_f, i_f = samples(denoiser, c_f, cfg, cfg.seed + 1_000, "salun: forget images", show_progress)
    x_r, i_r = samples(denoiser, c_r, cfg, cfg.seed + 2_000, "salun: retained images", show_progress)
    schedule = denoiser.timesteps(1000)

    def noised(x0: torch.Tensor, rng: np.random.Generator):
        noise = torch.from_numpy(rng.standard_normal(x0.shape).astype(np.float32)).to(x0)
        t = schedule[torch.from_numpy(rng.integers(len(schedule), size=len(x0)))]
        return denoiser.add_noise(x0, noise, t), noise, t

    # the saliency mask
    grads = {k: torch.zeros_like(p) for k, p in params.items()}
    rng = np.random.default_rng([cfg.seed, 1])
    for rows in torch.arange(len(x_f)).split(cfg.batch):
        x_t, noise, t = noised(x_f[rows], rng)
        e_c, e_u = denoiser.predict(torch.cat([x_t, x_t]), torch.cat([t, t]),
                                    torch.cat([c_f[i_f[rows]], uncond.expand(len(rows), *uncond.shape[1:])])
                                    ).chunk(2)
        guided = (1 + cfg.mask_guidance) * e_c - cfg.mask_guidance * e_u
        loss = -F.mse_loss(guided, denoiser.target(x_f[rows], noise, t))
        for k, g in zip(params, torch.autograd.grad(loss, list(params.values())), strict=True):
            grads[k] += g
    mask = global_top({k: g.abs() for k, g in grads.items()}, cfg.keep)
    del grads

    def step(k: int):
        rng = np.random.default_rng(parallel.step_key(cfg.seed, k))
        f, r = (torch.from_numpy(rng.integers(n, size=cfg.batch)) for n in (len(x_f), len(x_r)))
        x_t, _, t = noised(x_f[f], rng)
        e_f, e_pseudo = denoiser.predict(torch.cat([x_t, x_t]), torch.cat([t, t]),
                                         torch.cat([c_f[i_f[f]], c_pseudo[i_f[f]]])).chunk(2)
        forget = F.mse_loss(e_f, e_pseudo.detach())
        x_t, noise, t = noised(x_r[r], rng)
        retain = F.mse_loss(denoiser.predict(x_t, t, c_r[i_r[r]]), denoiser.target(x_r[r], noise, t))
        return forget + cfg.alpha * retain, {"forget": forget.item(), "retain": retain.item()}

    trace = finetune(params, step, cfg.iterations, cfg.lr, label="salun", mask=mask, checkpointing=checkpointing,
                     show_progress=show_progress)
    trace.info["mask_share"] = float(sum(m.sum() for m in mask.values()) / sum(m.numel() for m in mask.values()))
    return trace
