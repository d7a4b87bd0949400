"""RECE (Gong et al., ECCV 2024): UCE, then rounds of finding the embedding that still regenerates the concept
and erasing that one too.

After the UCE edit, with W_l the current weights that read the conditioning, W⁰_l the original ones and c a
target prompt's embedding (each token row), the edited model's best imitation of the concept is

    c' = argmin_x Σ_l ||W_l x - W⁰_l c||² + λ_r ||x||²  =  (Σ_l W_lᵀ W_l + λ_r I)⁻¹ (Σ_l W_lᵀ W⁰_l) c

(the reference's `close_regzero`), one map M applied to every token. Each round derives c' for every target
prompt and applies UCE's closed form with c' as the erased rows, the anchors as guides and the retained
prompts preserved; the λ term anchors to the current weights, so the edits accumulate. Weights that read a
pooled vector (FLUX, SDXL's) get their own M, from the pooled vectors.

Our reading: the reference keeps the best of UCE and the rounds by generating images and counting what a
detector (NudeNet) flags. A method cannot assume a detector for every concept, so each candidate is scored by
the model itself: its concept gap, Σ ||ε(x_t, c) - ε(x_t, a)||² over target prompts c and their anchors a, at
fixed points x_t of the base model's trajectories for the targets (`samples` points each), relative to the
base model's gap there; the candidate with the smallest is kept. The rounds use UCE's scales (`erase_scale`,
`preserve_scale`, `lamb`) as the first edit does; the reference's defaults are λ = 0.1, erase 1, preserve 0.1
with λ_r = 0.1 for objects and nudity (1e-3 for artists).
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from score_erasure.errors import UserError
from score_erasure.methods.loop import Trace
from score_erasure.methods.uce import UCEConfig, conditioning_rows, last_positions, pair_rows, uce, uce_weight
from score_erasure.spec import ConceptSpec


class RECEConfig(UCEConfig):
    epochs: int = Field(2, ge=1)  # rounds of derive-and-erase after the UCE edit
    regular_scale: float = Field(0.1, gt=0)  # λ_r: keeps the derived embedding small


def derived_map(current: list[torch.Tensor], original: list[torch.Tensor], regular_scale: float) -> torch.Tensor:
    """M = (Σ W_lᵀW_l + λ_r I)⁻¹ Σ W_lᵀ W⁰_l, in float64: c' = M c."""
    current, original = [W.double() for W in current], [W.double() for W in original]
    gram = sum(W.T @ W for W in current) + regular_scale * torch.eye(current[0].shape[1], dtype=torch.float64,
                                                                      device=current[0].device)
    return torch.linalg.solve(gram, sum(W.T @ W0 for W, W0 in zip(current, original, strict=True)))


def concept_gap(denoiser, points: list[tuple[torch.Tensor, torch.Tensor]], targets: torch.Tensor,
                anchors: torch.Tensor) -> float:
    """Σ ||ε(x_t, c) - ε(x_t, a)||² over the points (x_t of every target at one t each)."""
    gap = 0.0
    for x, t in points:
        e_c, e_a = denoiser.predict_many([(x, t, targets), (x, t, anchors)])
        gap += float((e_c - e_a).double().pow(2).sum())
    return gap


def trajectory_points(denoiser, cond: torch.Tensor, cfg: UCEConfig, steps: int = 25):
    """`samples` points (x_t, t) of the model's trajectories for `cond`, evenly spread over the steps."""
    generator = torch.Generator().manual_seed(cfg.seed)
    timesteps, x, start, points = denoiser.timesteps(steps), None, 0, []
    for position in np.linspace(0, steps - 1, cfg.samples).round().astype(int).tolist():
        x = denoiser.sample(cond, steps, until=position, generator=generator, x=x, start=start)
        start = position
        points.append((x, timesteps[position]))
    return points


def _inputs(denoiser, cond: torch.Tensor, reads: str) -> torch.Tensor:
    """What a conditioning reader reads of `cond`: its pooled vectors or its token states."""
    return denoiser.pooled(cond) if reads == "pooled" else denoiser.token_states(cond)


@torch.no_grad()
def rece(denoiser, spec: ConceptSpec, cfg: RECEConfig, **_) -> Trace:
    readers = denoiser.conditioning_readers()
    weights = {n: W for n, W in denoiser.parameters(cfg.group).items() if W.ndim == 2}
    if not set(weights) <= set(readers):
        raise UserError(f"rece edits the weights that read the conditioning itself (group 'inputs'), not "
                        f"'{cfg.group}': its derived embedding lives in the text encoder's space")
    original = {n: W.detach().clone() for n, W in weights.items()}
    cond_t, cond_a = denoiser.encode(spec.target_prompts), denoiser.encode(spec.anchor_prompts)
    points = trajectory_points(denoiser, cond_t, cfg)  # on the base model
    base_gap = concept_gap(denoiser, points, cond_t, cond_a)
    uce(denoiser, spec, cfg)
    kinds = {reads: [n for n in weights if readers[n] == reads] for reads in dict.fromkeys(readers[n] for n in weights)}
    targets = {reads: _inputs(denoiser, cond_t, reads) for reads in kinds}
    anchors = {reads: _inputs(denoiser, cond_a, reads) for reads in kinds}
    preserve = {reads: conditioning_rows(denoiser, spec, cfg, reads)[2] for reads in kinds}
    last_t, last_a = last_positions(denoiser, spec.target_prompts), last_positions(denoiser, spec.anchor_prompts)

    def derive(reads: str) -> torch.Tensor:
        names = kinds[reads]
        M = derived_map([weights[n] for n in names], [original[n] for n in names], cfg.regular_scale)
        return (targets[reads].double() @ M.T).to(targets[reads].dtype)

    def candidate(epoch: int) -> tuple[float, int, dict]:
        gap = concept_gap(denoiser, points, cond_t, cond_a) / base_gap
        trace.rows.append({"step": epoch, "loss": gap})  # loss: the relative concept gap, lower is better
        return gap, epoch, {n: W.detach().clone() for n, W in weights.items()}

    trace = Trace()
    kept = candidate(0)  # UCE alone
    for epoch in range(1, cfg.epochs + 1):
        for reads, names in kinds.items():
            c_adv = derive(reads)
            if reads == "pooled":
                c_erase, c_guide = c_adv, anchors[reads]
            else:
                c_erase, c_guide = pair_rows(c_adv, last_t, anchors[reads], last_a, cfg.tokens)
            for n in names:
                weights[n].copy_(uce_weight(weights[n], c_erase, c_guide, preserve[reads], cfg))
        kept = min(kept, candidate(epoch), key=lambda c: c[0])
    for n, W in kept[2].items():
        weights[n].copy_(W)
    trace.info["kept_epoch"] = kept[1]
    return trace
