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

The default group, `inputs`, is every weight that reads the conditioning itself (`Denoiser.conditioning_readers`):
on SD the cross-attention K/V (rows: token states); on FLUX the text stream's input projection (token states)
and the pooled vector's projection (rows: one pooled vector per prompt), which modulates every block and
carries the concept past any edit of the attention alone.

FLUX's text-stream K/V (`group="xattn-kv"`) read the text stream as each block sees it (modulated by the
timestep, mixed with the image by the blocks before), not the encoder's states: the rows are then what each
projection reads, captured at `samples` points (x_t, t) of the model's own trajectory for the concept, every
prompt at the same points so that c_i and c*_i stay paired. All layers are edited from the unedited model's
inputs (an edit of block b shifts what block b + 1 reads; the closed form ignores that).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from score_erasure.spec import ConceptSpec


class UCEConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    erase_scale: float = 1.0
    preserve_scale: float = 1.0
    lamb: float = 0.5
    group: str = "inputs"
    tokens: Literal["tail", "all"] = "all"
    samples: int = Field(4, ge=1)  # trajectory points whose inputs are collected, where inputs depend on x_t
    seed: int = 0


def last_positions(denoiser, prompts: list[str]) -> torch.Tensor:
    """Each prompt's last real token position (before the end-of-text token)."""
    tokenizer = denoiser.tokenizer
    tokens = tokenizer(prompts, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                       return_tensors="pt")
    return (tokens["attention_mask"].sum(1) - 2).clamp(min=0)


def pair_rows(emb: torch.Tensor, last: torch.Tensor, emb_g: torch.Tensor, last_g: torch.Tensor,
              tokens: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows (c_i, c*_i) from (N, L, D) inputs of prompts and guides: for each pair, the tail positions
    aligned at the last real tokens (as the reference does, dropping the overhang), plus every earlier
    position when `tokens="all"` and the two prompts have the same length."""
    length = emb.shape[1]
    rows, rows_g = [], []
    for e, g, i, j in zip(emb, emb_g, last.tolist(), last_g.tolist(), strict=True):
        span = length - max(i, j)
        whole = tokens == "all" and i == j
        rows.append(e[:i + span] if whole else e[i:i + span])
        rows_g.append(g[:j + span] if whole else g[j:j + span])
    return torch.cat(rows), torch.cat(rows_g)


def paired_rows(denoiser, prompts: list[str], guides: list[str], tokens: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`pair_rows` over the encoder's states: what SD's cross-attention projections read."""
    states = [denoiser.token_states(denoiser.encode(p)) for p in (prompts, guides)]
    return pair_rows(states[0], last_positions(denoiser, prompts), states[1], last_positions(denoiser, guides), tokens)


@torch.no_grad()
def layer_inputs(denoiser, names: list[str], prompt_sets: list[list[str]], cfg: UCEConfig,
                 steps: int = 25) -> dict[str, list[torch.Tensor]]:
    """For each module in `names`, its inputs (S * N, L, D) for every prompt set, all sets at the same `cfg.samples`
    points (x_t, t) of the trajectory drawn for the first set's first prompt."""
    modules = dict(denoiser.network.named_modules())
    conds = [denoiser.encode(prompts) for prompts in prompt_sets]
    captured = {name: [[] for _ in prompt_sets] for name in names}
    current: list[int | None] = [None]  # which set is being read; None while the trajectory is sampled

    def keep(name):
        return lambda _module, args: None if current[0] is None else captured[name][current[0]].append(args[0])

    hooks = [modules[name].register_forward_pre_hook(keep(name)) for name in names]
    try:
        timesteps, x, start = denoiser.timesteps(steps), None, 0
        generator = torch.Generator().manual_seed(cfg.seed)
        for position in np.linspace(0, steps - 1, cfg.samples).round().astype(int).tolist():
            x = denoiser.sample(conds[0][:1], steps, until=position, generator=generator, x=x, start=start)
            start = position
            for k, cond in enumerate(conds):
                current[0] = k
                denoiser.predict(x.expand(len(cond), *x.shape[1:]), timesteps[position], cond)
                current[0] = None
    finally:
        for hook in hooks:
            hook.remove()
    return {name: [torch.cat(found) for found in captured[name]] for name in names}


def uce_weight(W: torch.Tensor, c_erase: torch.Tensor, c_guide: torch.Tensor, c_preserve: torch.Tensor,
               cfg: UCEConfig) -> torch.Tensor:
    """The closed form above for one projection W (out x in); rows of the c matrices are embeddings.

    In float64 throughout: the Gram matrices' eigenvalues span four orders of magnitude, and in float32 the
    thread count alone moved the result by 1e-3."""
    W64, c_e, c_g, c_p = (m.double() for m in (W, c_erase, c_guide, c_preserve))
    lhs = cfg.lamb * W64 + cfg.erase_scale * (W64 @ c_g.T) @ c_e + cfg.preserve_scale * (W64 @ c_p.T) @ c_p
    rhs = (cfg.lamb * torch.eye(W.shape[1], dtype=torch.float64, device=W.device) + cfg.erase_scale * c_e.T @ c_e
           + cfg.preserve_scale * c_p.T @ c_p)
    return torch.linalg.solve(rhs, lhs, left=False).to(W.dtype)


def conditioning_rows(denoiser, spec: ConceptSpec, cfg: UCEConfig, reads: str):
    """(c_erase, c_guide, c_preserve) over what a conditioning reader reads: token states, or pooled vectors
    (one row per prompt)."""
    if reads == "pooled":
        c_erase, c_guide = (denoiser.pooled(denoiser.encode(p)) for p in (spec.target_prompts, spec.anchor_prompts))
        c_preserve = denoiser.pooled(denoiser.encode(spec.retain_prompts)) if spec.retain_prompts else c_erase[:0]
        return c_erase, c_guide, c_preserve
    c_erase, c_guide = paired_rows(denoiser, spec.target_prompts, spec.anchor_prompts, cfg.tokens)
    c_preserve = (paired_rows(denoiser, spec.retain_prompts, spec.retain_prompts, cfg.tokens)[0]
                  if spec.retain_prompts else c_erase[:0])
    return c_erase, c_guide, c_preserve


@torch.no_grad()
def uce(denoiser, spec: ConceptSpec, cfg: UCEConfig, **_) -> None:
    weights = {name: W for name, W in denoiser.parameters(cfg.group).items() if W.ndim == 2}
    readers = denoiser.conditioning_readers()
    if set(weights) <= set(readers):  # every weight reads the conditioning itself: rows from the encoder
        rows = {reads: conditioning_rows(denoiser, spec, cfg, reads) for reads in {readers[n] for n in weights}}
        for name, W in weights.items():
            W.copy_(uce_weight(W, *rows[readers[name]], cfg))
        return
    weights = {name.removesuffix(".weight"): W for name, W in weights.items()}
    sets = [spec.target_prompts, spec.anchor_prompts] + ([spec.retain_prompts] if spec.retain_prompts else [])
    inputs = layer_inputs(denoiser, list(weights), sets, cfg)
    last = [last_positions(denoiser, prompts).repeat(cfg.samples) for prompts in sets]
    for name, W in weights.items():
        found = inputs[name]
        c_erase, c_guide = pair_rows(found[0], last[0], found[1], last[1], cfg.tokens)
        c_preserve = (pair_rows(found[2], last[2], found[2], last[2], cfg.tokens)[0] if len(found) > 2
                      else c_erase.new_zeros(0, c_erase.shape[1]))
        W.copy_(uce_weight(W, c_erase, c_guide, c_preserve, cfg))
