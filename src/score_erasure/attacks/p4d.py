"""P4D, Prompting4Debugging (Chin et al., ICML 2024, arXiv 2309.06135): make the erased model follow the base.

A prompt P* is optimised so that the erased model's prediction under P* matches the base (unconstrained)
model's prediction under the original prompt P, on noised latents z_t of the base model's images of P:

    min_{P*}  E_{t, ε} ‖ε_θ'(z_t, t, W(P*)) − ε_θ(z_t, t, W(P))‖²

P* is a sequence of vocabulary tokens, found as PEZ does (Wen et al. 2023): continuous embeddings P*_cont
are updated with the gradient taken at their projection onto the nearest tokens (cosine). P4D-N learns
`n_tokens` tokens on their own; P4D-K (`insert_every` = K > 0) inserts one learned token after every K tokens
of P. Every `select_every` iterations the projected prompt is scored on a fixed batch and the best kept
(the paper scores generated images by CLIP similarity to the targets instead). On a token generator the two
predictions are next-code distributions on the base's codes, compared by KL divergence (our reading).
"""

from __future__ import annotations

import torch
from pydantic import Field

from score_erasure.attacks.base import AttackConfig, AttackContext, FoundPrompt, best_tokens, concept_latents
from score_erasure.prompting.optimise import draw_batch, generator
from score_erasure.prompting.tokens import (
    TokenPrompt,
    Vocabulary,
    exact_text,
    prompt_text,
    table,
    text_ids,
    token_prompt,
)


class P4DConfig(AttackConfig):

    n_tokens: int = Field(16, ge=1)  # P4D-N's prompt length (the paper's 16)
    insert_every: int = Field(0, ge=0)  # K of P4D-K (the paper's 3); 0 = P4D-N
    iterations: int = Field(150, ge=1)  # the paper: 3000 on SD v1.4
    lr: float = Field(0.1, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    target_images: int = Field(4, ge=1)
    batch: int = Field(2, ge=1)
    select_every: int = Field(25, ge=1)
    seed: int = 0

    def budget(self) -> dict:
        return {"n_tokens": self.n_tokens, "insert_every": self.insert_every, "iterations": self.iterations,
                "target_images": self.target_images, "batch": self.batch}


def p4d_prompt(denoiser, prompt: str, cfg: P4DConfig) -> TokenPrompt:
    """P4D-N: `n_tokens` learned tokens alone; P4D-K: one learned token after every K tokens of the prompt."""
    if cfg.insert_every == 0:
        return token_prompt(denoiser, [cfg.n_tokens])
    words = text_ids(denoiser.tokenizer, prompt)
    parts: list[list[int] | int] = []
    for start in range(0, len(words), cfg.insert_every):
        parts += [words[start:start + cfg.insert_every], 1]
    return token_prompt(denoiser, parts)


def p4d(ctx: AttackContext, prompt: str, index: int, cfg: P4DConfig) -> FoundPrompt:
    d, base = ctx.denoiser, ctx.base
    gen = generator(cfg.seed, index)
    z0 = concept_latents(ctx, prompt, cfg.target_images, gen)
    timesteps = ctx.timesteps()
    c_P = base.encode([prompt])
    P_star = p4d_prompt(d, prompt, cfg)
    vocab = Vocabulary(d)
    P_cont = table(d)(vocab.random((len(P_star.slots),), gen)).detach().clone().requires_grad_(True)
    opt = torch.optim.AdamW([P_cont], lr=cfg.lr, weight_decay=cfg.weight_decay)

    def loss(tokens: TokenPrompt, vectors: torch.Tensor | None, batch, reference: torch.Tensor):
        return batch.match(batch.predict(d, tokens.condition(d, vectors)), reference)

    def reference(batch) -> torch.Tensor:  # ε_θ(z_t, t, W(P)) of the base model (a token generator's logits)
        with torch.no_grad():
            return batch.predict(base, c_P)

    fixed = draw_batch(z0, timesteps, cfg.batch, generator(cfg.seed, index, 1))
    fixed_reference = reference(fixed)
    candidates, trace = [], []
    for it in range(cfg.iterations):
        token_ids = vocab.nearest(P_cont)
        projected = table(d)(token_ids).detach().requires_grad_(True)
        batch = draw_batch(z0, timesteps, cfg.batch, gen)
        value = loss(P_star.with_tokens(token_ids), projected, batch, reference(batch))
        (P_cont.grad,) = torch.autograd.grad(value, [projected])  # PEZ: the gradient at the projection
        opt.step()
        trace.append(value.item())
        if (it + 1) % cfg.select_every == 0 or it + 1 == cfg.iterations:
            candidates.append(vocab.nearest(P_cont))
    token_ids, _ = best_tokens(candidates, lambda ids: loss(P_star.with_tokens(ids), None, fixed, fixed_reference))
    found = P_star.with_tokens(token_ids)
    return FoundPrompt(found, prompt_text(d, found), exact_text=exact_text(d, found), trace=trace)
