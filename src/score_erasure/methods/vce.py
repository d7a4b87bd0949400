"""VCE (Han et al., arXiv 2509.16986, "Visual Contrast Exploitation"): erasure in an autoregressive image
generator as a preference: for the concept prompt x, the image without the concept is preferred to the image with
it, the two differing in nothing else.

    y_w, y_l   = codes of the same scene without and with the concept (a contrastive pair)
    ℓ_θ(y | x) = (1/|K|) Σ_{i ∈ K} log π_θ(y_i | y_<i, x)      K: the codes kept by token drop (rate p)
    L          = −log σ( β [ (ℓ_θ(y_w|x) − ℓ_ref(y_w|x)) − (ℓ_θ(y_l|x) − ℓ_ref(y_l|x)) ] )

π_ref is the base model (its per-code log-probabilities are computed once). The token-level average and the
random token drop are the paper's stabilisers of DPO over long code sequences.

Our reading (docs/methods.md; VCE's code is not public and its losses are given in words only): the paper builds
its pairs with a multimodal LLM's refined captions; on the embedded world's concepts the renderer gives them
exactly (the same scene with and without the concept, `pairs = "renderer"`, the default there), elsewhere they
are the base model's codes for the concept prompt (y_l) and for its anchor (y_w) at the same seed. β is DPO's
usual 0.1; p, the rate and the step count are ours. The attention and feed-forward layers
are trained, as S-VARE's (which parameters VCE trains is not stated).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from score_erasure import parallel
from score_erasure.errors import UserError
from score_erasure.methods.loop import Checkpointing, Trace, finetune, trainable
from score_erasure.spec import ConceptSpec
from score_erasure.toyworld.specs import contrastive_renders, world_spec


class VCEConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    group: str = "attention+ffn"
    iterations: int = Field(200, ge=1)
    lr: float = Field(1e-5, gt=0)
    batch: int = Field(2, ge=1)
    beta: float = Field(0.1, gt=0)  # β
    token_drop: float = Field(0.1, ge=0, lt=1)  # p
    pairs_per_prompt: int = Field(4, ge=1)  # contrastive pairs for each target prompt
    # where the pairs come from: the base model's codes for the target and its anchor at one seed ("sampled"), or
    # the world renderer's scene with and without the concept ("renderer"); "auto": the renderer on the embedded
    # world's concepts
    pairs: Literal["auto", "renderer", "sampled"] = "auto"
    guidance: float = 5.0  # the base model's when it draws the pairs
    seed: int = 0


def dpo_loss(policy_w: torch.Tensor, policy_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor,
             keep: torch.Tensor, beta: float) -> torch.Tensor:
    """L of a batch from per-code log-probabilities (B, N) and the kept codes (B, N, booleans)."""

    def average(log_probs: torch.Tensor) -> torch.Tensor:
        return (log_probs * keep).sum(-1) / keep.sum(-1).clamp(min=1)

    margin = (average(policy_w) - average(ref_w)) - (average(policy_l) - average(ref_l))
    return -F.logsigmoid(beta * margin).mean()


@torch.no_grad()
def sampled_pairs(generator, spec: ConceptSpec, cfg: VCEConfig) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """The base's codes for each target prompt (y_l) and for its anchor (y_w) at the same seed."""
    pairs = spec.pairs(cfg.pairs_per_prompt)
    seeds = [cfg.seed + i for i in range(len(pairs))]
    y_w = generator.sample_seeds(generator.encode([a for _, a in pairs]), seeds, cfg.guidance)
    y_l = generator.sample_seeds(generator.encode([t for t, _ in pairs]), seeds, cfg.guidance)
    return [t for t, _ in pairs], y_w, y_l


@torch.no_grad()
def rendered_pairs(generator, spec: ConceptSpec, cfg: VCEConfig) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """The codes of rendered scenes with (y_l) and without (y_w) each concept, for the target prompts that are
    that concept's own in the world (all of them for a spec of one concept)."""
    prompts, shown, hidden = [], [], []
    for k, concept in enumerate(spec.concepts):
        own = [p for p in spec.target_prompts if p in world_spec(concept).target_prompts] or spec.target_prompts
        with_concept, without = contrastive_renders(concept, len(own) * cfg.pairs_per_prompt, cfg.seed + k)
        prompts += [p for p in own for _ in range(cfg.pairs_per_prompt)]
        shown.append(with_concept)
        hidden.append(without)

    def codes(images: list[np.ndarray]) -> torch.Tensor:
        return generator.image_codes(torch.from_numpy(np.concatenate(images)).float() / 255)

    return prompts, codes(hidden), codes(shown)


def vce(generator, spec: ConceptSpec, cfg: VCEConfig, checkpointing: Checkpointing | None = None,
        show_progress: bool = True) -> Trace:
    renderer = cfg.pairs == "renderer" or (cfg.pairs == "auto" and spec.world)
    if renderer and not spec.world:
        raise UserError("vce: pairs = 'renderer' needs the embedded world's concepts; use 'sampled'")
    prompts, y_w, y_l = (rendered_pairs if renderer else sampled_pairs)(generator, spec, cfg)
    x = generator.encode(prompts)
    with torch.no_grad():
        ref_w, ref_l = generator.code_log_probs(x, y_w), generator.code_log_probs(x, y_l)
    params = trainable(generator, cfg.group)

    def step(k: int):
        rng = np.random.default_rng(parallel.step_key(cfg.seed, k))
        rows = rng.choice(len(prompts), size=min(cfg.batch, len(prompts)), replace=False).tolist()
        keep = torch.from_numpy(rng.random(y_w[rows].shape) >= cfg.token_drop).to(ref_w.device)
        policy_w = generator.code_log_probs(x[rows], y_w[rows])
        policy_l = generator.code_log_probs(x[rows], y_l[rows])
        loss = dpo_loss(policy_w, policy_l, ref_w[rows], ref_l[rows], keep, cfg.beta)
        return loss, {"dpo": loss.item()}

    return finetune(params, step, cfg.iterations, cfg.lr, label="vce", checkpointing=checkpointing,
                    show_progress=show_progress)
