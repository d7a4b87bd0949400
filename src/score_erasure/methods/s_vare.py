"""S-VARE (Zhong et al., ICLR 2026, "VARE"): erasure in an autoregressive image generator by teaching it, under
the concept prompt c*, the codes that its own base model draws for the safe prompt c.

    r        = codes the base model draws for c (the auxiliary visual tokens of VARE, teacher-forced below)
    L_FCE    = (1/N) Σ_i 1[CE_i > ln 2] · CE_i,     CE_i = −log p_θ(r_i | r_<i, c*)
    L_Pre    = λ (1/N) Σ_i KL( p_base(· | r_<i, c) ‖ p_θ(· | r_<i, c) )
    L        = L_FCE + L_Pre

Teacher forcing on the safe prompt's own codes keeps the erasure from drifting along the sequence; the filter
stops pushing a code the model already gives the safe value, so the few codes that still carry the concept get
the updates; the KL keeps what the safe prompt draws. The attention and feed-forward layers are trained.

Our reading (docs/methods.md): the reference is bitwise (Infinity: a token is 32 bits, "wrong" when a bit's CE
exceeds ln 2, optimised when at least α = 25% of its bits are wrong). A token here is one code of a codebook, so
the bit rule applies to the code itself (wrong when p(r_i) < 1/2) and any α in (0, 1] selects the same tokens.
The two terms share one step (the reference steps each apart). Defaults are the reference code's: λ 0.5, batch 2,
500 iterations, AdamW β (0.9, 0.97) at its effective rate (6e-3 × 2 / 256 ≈ 5e-5; plain Adam here, the shared loop).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from score_erasure import parallel
from score_erasure.backends.tokens import code_kl
from score_erasure.methods.loop import Checkpointing, Trace, finetune, trainable
from score_erasure.spec import ConceptSpec


class SVAREConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    group: str = "attention+ffn"
    iterations: int = Field(500, ge=1)
    lr: float = Field(5e-5, gt=0)
    batch: int = Field(2, ge=1)
    reg_lambda: float = Field(0.5, ge=0)  # λ
    sequences_per_prompt: int = Field(4, ge=1)  # base codes r drawn for each safe prompt (one seed each)
    guidance: float = 5.0  # the base model's when it draws r
    seed: int = 0


def filtered_cross_entropy(logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """L_FCE of a batch: logits (B, N, V), target codes (B, N); codes already given p >= 1/2 count zero."""
    ce = F.cross_entropy(logits.flatten(0, 1).float(), codes.flatten(), reduction="none").view(codes.shape)
    return (ce * (ce.detach() > math.log(2))).mean()


def preservation(logits: torch.Tensor, base_log_probs: torch.Tensor) -> torch.Tensor:
    """KL(p_base ‖ p_θ) per code, averaged: base log-probabilities (B, N, V) against the model's logits."""
    return code_kl(base_log_probs, logits)


def s_vare(generator, spec: ConceptSpec, cfg: SVAREConfig, checkpointing: Checkpointing | None = None,
           show_progress: bool = True) -> Trace:
    pairs = spec.pairs(cfg.sequences_per_prompt)
    c_star = generator.encode([t for t, _ in pairs])
    c = generator.encode([a for _, a in pairs])
    with torch.no_grad():
        r = generator.sample_seeds(c, [cfg.seed + i for i in range(len(pairs))], cfg.guidance)
        base_log_probs = torch.log_softmax(generator.image_logits(c, r).float(), -1)
    params = trainable(generator, cfg.group)

    def step(k: int):
        rng = np.random.default_rng(parallel.step_key(cfg.seed, k))
        rows = rng.choice(len(pairs), size=min(cfg.batch, len(pairs)), replace=False).tolist()
        fce = filtered_cross_entropy(generator.image_logits(c_star[rows], r[rows]), r[rows])
        pre = cfg.reg_lambda * preservation(generator.image_logits(c[rows], r[rows]), base_log_probs[rows])
        return fce + pre, {"fce": fce.item(), "pre": pre.item()}

    return finetune(params, step, cfg.iterations, cfg.lr, label="s-vare", checkpointing=checkpointing,
                    show_progress=show_progress)
