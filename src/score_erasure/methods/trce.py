"""TRCE (Chen et al., ICCV 2025): a closed-form edit of what the end token says, then a contrastive fine-tune of
the early denoising steps.

Stage 1 (textual). The prompt's first end-of-text token, a summary of the prompt in a causal text encoder,
carries the concept into every cross-attention layer. Each K/V projection W is edited so that the target
prompts' end token reads as their anchors':

    W' = argmin λ||W' - W||² + Σ_i ||W' e_i - W e*_i||² + s Σ_p ||W' p - W p||²

e_i, e*_i the end token's state in target prompt i and in its anchor, p every token of the retained prompts
(UCE's closed form over these rows).

Stage 2 (visual). The base model ε_0's own trajectories for the target prompts are cached over their first
`early` steps (the noisy half, where the layout is decided), each point z_t with two guidance-amplified
directions:

    f_safe = ε_0(z_t, c*) + g (ε_0(z_t, c*) - ε_0(z_t, ∅))      f_unsafe = ε_0(z_t, c) + g (ε_0(z_t, c) - ε_0(z_t, ∅))

and the image stream's attention (self-attention and the queries that read the text) is fine-tuned so that
both the conditional and the unconditional prediction sit on the safe side by a margin m, while the
unconditional prediction elsewhere stays what stage 1 left:

    L_erase = ½ Σ_{y in (c, ∅)} max(0, β (|ε(z_t, y) - f_safe|² - |ε(z_t, y) - f_unsafe|² + m))
    L_pres  = |ε(z_u, ∅) - ε_1(z_u, ∅)|²                 z_u anywhere on the retained prompts' trajectories
    L       = L_erase + λ_p L_pres

Defaults are the reference's (g 15, β 1, m 0.01, λ_p 100, trajectories at guidance 3 over 50 steps, the first 25
kept, 3 epochs over 100 trajectories, a preservation batch of 4) except where noted. Our reading, where this
toolkit differs: |·|² is the mean over elements; the closed form's λ and s are UCE's defaults on this toolkit's
models (the reference: λ = 0 and a COCO token cache at s = 0.01 / 30,000), its rows are summed, not averaged;
z_u come from the retained prompts' trajectories (the reference: 2,000 trajectories of COCO captions); Adam
without weight decay (the shared loop; the reference: AdamW, 0.01); the learning rate (the reference's 1e-6
barely moves this toolkit's small models; see docs/methods.md). The end token is found with the tokenizer (the
reference counts words). On a bidirectional encoder (the embedded model's MiniLM) the end token is one summary
among many: every token has seen the concept. UNet models only, as the reference.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from score_erasure.methods.loop import Checkpointing, Trace, finetune, trainable
from score_erasure.methods.uce import UCEConfig, last_positions, uce_weight
from score_erasure.progress import progress_bar
from score_erasure.spec import ConceptSpec


class TRCEConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    lamb: float = Field(0.5, ge=0)  # stage 1: λ
    preserve_scale: float = Field(1.0, ge=0)  # stage 1: s
    iterations: int = Field(300, ge=0)  # stage 2 steps (0: stage 1 alone)
    lr: float = Field(1e-6, gt=0)
    amplify: float = 15.0  # g
    beta: float = Field(1.0, gt=0)
    margin: float = Field(0.01, ge=0)
    preserve_weight: float = Field(100.0, ge=0)  # λ_p
    preserve_batch: int = Field(4, ge=1)
    trajectories: int = Field(100, ge=1)  # of the target prompts, in turn
    preserve_trajectories: int = Field(8, ge=1)  # of the retained prompts, in turn
    steps: int = Field(50, ge=2)
    early: int = Field(25, ge=1)  # the first `early` of `steps` are kept
    guidance: float = 3.0
    chunk: int = Field(16, ge=1)  # trajectories sampled at once
    seed: int = 0


def end_token_rows(denoiser, prompts: list[str]) -> torch.Tensor:
    """(N, D): each prompt's state at its first end-of-text token."""
    states = denoiser.token_states(denoiser.encode(prompts))
    return states[torch.arange(len(prompts)), last_positions(denoiser, prompts) + 1]


def in_turn(n: int, count: int) -> list[int]:
    """Indices of `count` cached trajectories cycling through n prompts, and at least one for each: with several
    concepts a cache sized for one (AdvUnlearn's and DuMo's 16) would leave the later concepts' prompts untrained."""
    return [j % n for j in range(max(count, n))]


@torch.no_grad()
def trajectory_points(denoiser, cond: torch.Tensor, cfg: TRCEConfig, seed: int, keep: int, label: str = "",
                      show_progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `keep` points of one trajectory per row of `cond`: latents (keep, N, ...) and their timesteps.
    `cfg` gives the sampling (steps, guidance, chunk): TRCE's, or any config with those fields (AdvUnlearn's)."""
    timesteps, keep = denoiser.timesteps(cfg.steps), min(keep, cfg.steps)
    chunks = []
    with progress_bar(transient=True) as bar:
        task = bar.add_task(label, total=len(cond), info="", visible=show_progress)
        for k, rows in enumerate(cond.split(cfg.chunk)):
            generator, x, points = torch.Generator().manual_seed(seed + k), None, []
            for position in range(keep):
                x = denoiser.sample(rows, cfg.steps, until=position, guidance=cfg.guidance, generator=generator, x=x,
                                    start=max(position - 1, 0))
                points.append(x)
            chunks.append(torch.stack(points))
            bar.update(task, advance=len(rows))
    return torch.cat(chunks, dim=1), timesteps[:keep]


def trce(denoiser, spec: ConceptSpec, cfg: TRCEConfig, checkpointing: Checkpointing | None = None,
         show_progress: bool = True) -> Trace:
    n = len(spec.target_prompts)
    pick = in_turn(n, cfg.trajectories)
    retain = spec.retain_prompts or [""]
    with torch.no_grad():
        targets, anchors = denoiser.encode(spec.target_prompts), denoiser.encode(spec.anchor_prompts)
        uncond = denoiser.unconditional()
        # stage 2's data, from the base model
        z, timesteps = trajectory_points(denoiser, targets[pick], cfg, cfg.seed, cfg.early, "trce: trajectories",
                                         show_progress)
        f_safe, f_unsafe = torch.empty_like(z), torch.empty_like(z)
        for k, t in enumerate(timesteps):
            for rows in torch.arange(len(pick)).split(cfg.chunk):
                c, a = targets[[pick[i] for i in rows]], anchors[[pick[i] for i in rows]]
                x = z[k, rows]
                e_c, e_a, e_u = denoiser.predict(torch.cat([x, x, x]), t,
                                                 torch.cat([c, a, uncond.expand_as(c)])).chunk(3)
                f_safe[k, rows] = e_a + cfg.amplify * (e_a - e_u)
                f_unsafe[k, rows] = e_c + cfg.amplify * (e_c - e_u)
        retained = denoiser.encode(retain)
        z_u, timesteps_u = trajectory_points(denoiser, retained[[j % len(retain) for j in
                                                                 range(cfg.preserve_trajectories)]],
                                             cfg, cfg.seed + 10_000, cfg.steps, "trce: retained trajectories",
                                             show_progress)

        # stage 1: the end token of each target prompt onto its anchor's
        closed = UCEConfig(erase_scale=1.0, preserve_scale=cfg.preserve_scale, lamb=cfg.lamb)
        rows_t, rows_a = end_token_rows(denoiser, spec.target_prompts), end_token_rows(denoiser, spec.anchor_prompts)
        preserve = denoiser.token_states(retained).flatten(0, 1) if spec.retain_prompts else rows_t[:0]
        for W in (W for W in denoiser.parameters("xattn-kv").values() if W.ndim == 2):
            W.copy_(uce_weight(W, rows_t, rows_a, preserve, closed))
        anchor_u = torch.stack([denoiser.predict(z_u[k], t, uncond.expand(z_u.shape[1], -1, -1))
                                for k, t in enumerate(timesteps_u)])
    if cfg.iterations == 0:
        return Trace()

    # stage 2: the triplet loss on the early points, the unconditional prediction kept elsewhere
    params = trainable(denoiser, "image-attn")
    rng = np.random.default_rng([cfg.seed, 2])

    def step(_):
        j, k = int(rng.integers(len(pick))), int(rng.integers(len(timesteps)))
        x, t, c = z[k, j:j + 1], timesteps[k], targets[pick[j]][None]
        e_c, e_u = denoiser.predict(torch.cat([x, x]), t, torch.cat([c, uncond])).chunk(2)
        erase = sum(torch.relu(cfg.beta * ((e - f_safe[k, j]).pow(2).mean() - (e - f_unsafe[k, j]).pow(2).mean()
                                           + cfg.margin)) for e in (e_c, e_u)) / 2
        which = rng.integers(z_u.shape[1], size=cfg.preserve_batch)
        k_u = int(rng.integers(len(timesteps_u)))
        kept = denoiser.predict(z_u[k_u, which], timesteps_u[k_u], uncond.expand(len(which), -1, -1))
        pres = (kept - anchor_u[k_u, which]).pow(2).mean()
        return erase + cfg.preserve_weight * pres, {"erase": erase.item(), "pres": pres.item()}

    # not checkpointed (its draws come from one stream, which a resume could not continue): 1.5 minutes on
    # the embedded model, seconds on a GPU
    return finetune(params, step, cfg.iterations, cfg.lr, label="trce", show_progress=show_progress)
