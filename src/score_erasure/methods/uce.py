"""UCE (Gandikota et al. 2024): a closed-form edit of the cross-attention K/V projections.

For every projection W, with c_i the text embedding of an erased concept, c*_i that of its guide
(anchor) and c_j those of preserved concepts:

    W' = ( λ W + s_e Σ_i W c*_i c_iᵀ + s_p Σ_j W c_j c_jᵀ ) ( λ I + s_e Σ_i c_i c_iᵀ + s_p Σ_j c_j c_jᵀ )⁻¹

so W' c_i ≈ W c*_i (the concept now reads as its anchor) while W' c_j ≈ W c_j. The embedding of a
prompt is its last real token's, as in the reference implementation.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict

from score_erasure.spec import ConceptSpec


class UCEConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    erase_scale: float = 1.0
    preserve_scale: float = 1.0
    lamb: float = 0.5
    group: str = "xattn-kv"


def last_token_embeddings(denoiser, prompts: list[str]) -> torch.Tensor:
    """(N, D): each prompt's embedding at its last token before the end-of-text token."""
    tokens = denoiser.pipe.tokenizer(prompts, padding="max_length", truncation=True,
                                     max_length=denoiser.pipe.tokenizer.model_max_length, return_tensors="pt")
    last = (tokens["attention_mask"].sum(1) - 2).clamp(min=0)
    return denoiser.encode(prompts)[torch.arange(len(prompts)), last]


def uce_weight(W: torch.Tensor, c_erase: torch.Tensor, c_guide: torch.Tensor, c_preserve: torch.Tensor,
               cfg: UCEConfig) -> torch.Tensor:
    """The closed form above for one projection W (out x in); rows of the c matrices are embeddings."""
    d = W.shape[1]
    lhs = (cfg.lamb * W + cfg.erase_scale * (W @ c_guide.T) @ c_erase
           + cfg.preserve_scale * (W @ c_preserve.T) @ c_preserve)
    rhs = cfg.lamb * torch.eye(d, dtype=W.dtype) + cfg.erase_scale * c_erase.T @ c_erase \
        + cfg.preserve_scale * c_preserve.T @ c_preserve
    return lhs @ torch.linalg.inv(rhs.double()).to(W.dtype)


@torch.no_grad()
def uce(denoiser, spec: ConceptSpec, cfg: UCEConfig, **_) -> None:
    c_erase = last_token_embeddings(denoiser, spec.target_prompts)
    c_guide = last_token_embeddings(denoiser, spec.anchor_prompts)
    c_preserve = (last_token_embeddings(denoiser, spec.retain_prompts) if spec.retain_prompts
                  else c_erase.new_zeros(0, c_erase.shape[1]))
    for W in denoiser.parameters(cfg.group).values():
        if W.ndim == 2:
            W.copy_(uce_weight(W, c_erase, c_guide, c_preserve, cfg))
