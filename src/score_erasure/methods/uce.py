"""UCE (Gandikota et al. 2024): a closed-form edit of the cross-attention K/V projections.

For every projection W, with c_i the text embedding of an erased concept, c*_i that of its guide
(anchor) and c_j those of preserved concepts:

    W' = ( λ W + s_e Σ_i W c*_i c_iᵀ + s_p Σ_j W c_j c_jᵀ ) ( λ I + s_e Σ_i c_i c_iᵀ + s_p Σ_j c_j c_jᵀ )⁻¹

so W' c_i ≈ W c*_i (the concept now reads as its anchor) while W' c_j ≈ W c_j. The rows c_i are token
embeddings the UNet attends to. `tokens="tail"` is the reference's choice: from a prompt's last real token
to the end of the padded sequence (CLIP is causal, so only these positions have seen the whole prompt),
the erased and guide prompts aligned at their last tokens. `tokens="all"` (the default) adds the earlier
positions where the two prompts have the same length: a bidirectional encoder such as MiniLM spreads the
concept over every position, so editing only the tail leaves it readable from the others.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict

from score_erasure.errors import UserError
from score_erasure.spec import ConceptSpec


class UCEConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    erase_scale: float = 1.0
    preserve_scale: float = 1.0
    lamb: float = 0.5
    group: str = "xattn-kv"
    tokens: Literal["tail", "all"] = "all"


def _encoded(denoiser, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, L, D) embeddings and each prompt's last real token position (before the end-of-text token)."""
    tokens = denoiser.pipe.tokenizer(prompts, padding="max_length", truncation=True,
                                     max_length=denoiser.pipe.tokenizer.model_max_length, return_tensors="pt")
    return denoiser.encode(prompts), (tokens["attention_mask"].sum(1) - 2).clamp(min=0)


def paired_rows(denoiser, prompts: list[str], guides: list[str], tokens: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows (c_i, c*_i): for each prompt pair, the tail positions aligned at the last real tokens (as
    the reference does, dropping the overhang), plus every earlier position when `tokens="all"` and the
    two prompts have the same length."""
    emb, last = _encoded(denoiser, prompts)
    emb_g, last_g = _encoded(denoiser, guides)
    length = emb.shape[1]
    rows, rows_g = [], []
    for e, g, i, j in zip(emb, emb_g, last.tolist(), last_g.tolist(), strict=True):
        span = length - max(i, j)
        whole = tokens == "all" and i == j
        rows.append(e[:i + span] if whole else e[i:i + span])
        rows_g.append(g[:j + span] if whole else g[j:j + span])
    return torch.cat(rows), torch.cat(rows_g)


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
    if not denoiser.kv_reads_conditioning:
        raise UserError(f"uce edits projections that read the text encoder's states directly; on "
                        f"{type(denoiser.pipe).__name__} they read a text stream that every block transforms: "
                        "not supported yet (use score or esd-x)")
    c_erase, c_guide = paired_rows(denoiser, spec.target_prompts, spec.anchor_prompts, cfg.tokens)
    c_preserve = (paired_rows(denoiser, spec.retain_prompts, spec.retain_prompts, cfg.tokens)[0]
                  if spec.retain_prompts else c_erase.new_zeros(0, c_erase.shape[1]))
    for W in denoiser.parameters(cfg.group).values():
        if W.ndim == 2:
            W.copy_(uce_weight(W, c_erase, c_guide, c_preserve, cfg))
