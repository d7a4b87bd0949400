"""VCE (Han et al., arXiv 2509.16986, "Visual Contrast Exploitation"): erasure in an autoregressive image
generator as a preference: for the concept prompt x, the image without the concept is preferred to the image with
it, the two differing in nothing else.

    y_w, y_l   = codes of the same scene without and with the concept (a contrastive pair)
    ℓ_θ(y | x) = (1/|K|) Σ_{i ∈ K} log π_θ(y_i | y_<i, x)      K: the codes kept by token drop (rate p)
    L          = −log σ( β [ (ℓ_θ(y_w|x) − ℓ_ref(y_w|x)) − (ℓ_θ(y_l|x) − ℓ_ref(y_l|x)) ] )

π_ref is the base model (its per-code log-probabilities are computed once). The token-level average and the
random token drop are the paper's stabilisers of DPO over long code sequences.

Our reading (docs/methods.md; VCE's code is not public and its losses are given in words only): the pairs are the
base model's codes for the concept prompt (y_l) and for its anchor (y_w) at the same seed, the contrast the
paper builds with a multimodal LLM's refined captions; on a model of the embedded world the renderer would give
exact pairs. β is DPO's usual 0.1; p, the rate and the step count are ours. The attention and feed-forward layers
are trained, as S-VARE's (which parameters VCE trains is not stated).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from score_erasure import parallel
from score_erasure.methods.loop import Checkpointing, Trace, finetune, trainable
from score_erasure.spec import ConceptSpec


class VCEConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    group: str = "attention+ffn"
    iterations: int = Field(200, ge=1)
    lr: float = Field(1e-5, gt=0)
    batch: int = Field(2, ge=1)
    beta: float = Field(0.1, gt=0)  # β
    token_drop: float = Field(0.1, ge=0, lt=1)  # p
    pairs_per_prompt: int = Field(4, ge=1)  # contrastive pairs drawn for each target prompt (one seed each)
    guidance: float = 5.0  # the base model's when it draws the pairs
    seed: int = 0


def dpo_loss(policy_w: torch.Tensor, policy_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor,
             keep: torch.Tensor, beta: float) -> torch.Tensor:
    """L of a batch from per-code log-probabilities (B, N) and the kept codes (B, N, booleans)."""

    def average(log_probs: torch.Tensor) -> torch.Tensor:
        return (log_probs * keep).sum(-1) / keep.sum(-1).clamp(min=1)

    margin = (average(policy_w) - average(ref_w)) - (average(policy_l) - average(ref_l))
    return -F.logsigmoid(beta * margin).mean()


def vce(generator, spec: ConceptSpec, cfg: VCEConfig, checkpointing: Checkpointing | None = None,
        show_progress: bool = True) -> Trace:
    pairs = [(t, a) for t, a in zip(spec.target_prompts, spec.anchor_prompts, strict=True)
             for _ in range(cfg.pairs_per_prompt)]
    x = generator.encode([t for t, _ in pairs])
    with torch.no_grad():
        seeds = [cfg.seed + i for i in range(len(pairs))]
        y_w = generator.sample(generator.encode([a for _, a in pairs]),
                               [torch.Generator().manual_seed(s) for s in seeds], cfg.guidance)
        y_l = generator.sample(x, [torch.Generator().manual_seed(s) for s in seeds], cfg.guidance)
        ref_w, ref_l = generator.code_log_probs(x, y_w), generator.code_log_probs(x, y_l)
    params = trainable(generator, cfg.group)

    def step(k: int):
        rng = np.random.default_rng(parallel.step_key(cfg.seed, k))
        rows = rng.choice(len(pairs), size=min(cfg.batch, len(pairs)), replace=False).tolist()
        keep = torch.from_numpy(rng.random(y_w[rows].shape) >= cfg.token_drop).to(ref_w.device)
        policy_w = generator.code_log_probs(x[rows], y_w[rows])
        policy_l = generator.code_log_probs(x[rows], y_l[rows])
        loss = dpo_loss(policy_w, policy_l, ref_w[rows], ref_l[rows], keep, cfg.beta)
        return loss, {"dpo": loss.item()}

    return finetune(params, step, cfg.iterations, cfg.lr, label="vce", checkpointing=checkpointing,
                    show_progress=show_progress)
