"""TRACE (Carter, arXiv 2505.23312; the SCORE authors, no code): a closed-form cross-attention edit that removes the
concept's hidden representation, then a trajectory-aware fine-tune active only in the late sampling steps.

    1. W' = UCE's closed form on the weights that read the conditioning (the concept's embeddings onto its anchors',
       retained prompts preserved);
    2. ANT's objective (SCORE's without the adversary) on the edited model: the first `early_fraction` of the
       trajectory held to the edited model's (trajectory consistency), the concept erased at the later steps.

What is ours: the abstract gives no equations, so both stages are this toolkit's own (UCE's closed form, SCORE's
loop without its discriminator); the late-step window is `early_fraction` of SCORE's schedule, the saliency-masked
UNet stands in for its per-concept LoRA adapters, and no integration regulariser is built. Stage 2's reference ε_0
is the model after stage 1.
"""

from __future__ import annotations

from pydantic import Field

from score_erasure.methods.loop import Checkpointing, Trace
from score_erasure.methods.score import ScoreConfig, score
from score_erasure.methods.uce import UCEConfig, uce
from score_erasure.spec import ConceptSpec


class TRACEConfig(ScoreConfig):
    adversarial: bool = False
    early_fraction: float = Field(0.5, ge=0, lt=1)  # the fine-tune acts on the later half of the trajectory
    # stage 1: UCE's closed form
    lamb: float = Field(0.5, ge=0)
    erase_scale: float = Field(1.0, ge=0)
    preserve_scale: float = Field(1.0, ge=0)


def trace(denoiser, spec: ConceptSpec, cfg: TRACEConfig, checkpointing: Checkpointing | None = None,
          show_progress: bool = True) -> Trace:
    uce(denoiser, spec, UCEConfig(lamb=cfg.lamb, erase_scale=cfg.erase_scale, preserve_scale=cfg.preserve_scale))
    return score(denoiser, spec, cfg, checkpointing, show_progress)
