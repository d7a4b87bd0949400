"""UnlearnDiffAtk (Zhang et al., ECCV 2024, arXiv 2310.11868): the erased model is its own concept classifier.

k adversarial tokens P' are prepended to the prompt P and chosen so that the erased model ε_θ* denoises
target images x_tgt (the base model's images of P that show the concept) best when prompted with [P'; P]:

    min_{u ∈ Δ^k}  E_{t, ε} ‖ε_θ*(x_{t,tgt}, t, c([P'(u); P])) − ε‖²,    P'(u) ~ one-hot samples of u

Each token is a distribution u_i over the vocabulary on the simplex Δ; the forward pass uses a sampled
one-hot (gradients pass straight through, clipped to [−1, 1]), Adam with weight decay updates u, and u is
projected back onto Δ. The result is argmax u. Every `select_every` iterations the current argmax is
scored on a fixed (x, t, ε) batch and the best is kept (the paper checks a classifier instead).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from score_erasure.attacks.base import AttackConfig, AttackContext, FoundPrompt, best_tokens, concept_latents
from score_erasure.prompting.optimise import denoising_loss, draw_batch, generator
from score_erasure.prompting.tokens import Vocabulary, exact_text, prompt_text, token_prompt


class UnlearnDiffConfig(AttackConfig):

    n_tokens: int = Field(5, ge=1)  # k, prepended (the paper's default)
    iterations: int = Field(100, ge=1)  # the paper: 40 at one timestep; ours are cheap at 32x32
    lr: float = Field(0.01, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    target_images: int = Field(4, ge=1)
    batch: int = Field(4, ge=1)  # (x_tgt, t, ε) draws per iteration
    select_every: int = Field(20, ge=1)
    seed: int = 0

    def budget(self) -> dict:
        return {"n_tokens": self.n_tokens, "iterations": self.iterations, "target_images": self.target_images,
                "batch": self.batch}


def project_simplex(u: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row onto the probability simplex (sort-based, Duchi et al. 2008)."""
    s, _ = u.sort(dim=-1, descending=True)
    cumulative = s.cumsum(-1) - 1
    j = torch.arange(1, u.shape[-1] + 1, dtype=u.dtype)
    rho = ((s - cumulative / j) > 0).to(u.dtype).mul(j).argmax(-1, keepdim=True)
    theta = cumulative.gather(-1, rho) / (rho + 1).to(u.dtype)
    return (u - theta).clamp(min=0)


class _SampledOneHot(torch.autograd.Function):
    """Forward: a one-hot sample of each row of u. Backward: the gradient, clipped to [−1, 1]."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        picks = torch.multinomial(u.clamp(min=0) + 1e-12, 1, generator=gen).squeeze(-1)
        return F.one_hot(picks, u.shape[-1]).to(u.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return F.hardtanh(grad), None


def unlearndiff(ctx: AttackContext, prompt: str, index: int, cfg: UnlearnDiffConfig) -> FoundPrompt:
    d = ctx.denoiser
    gen = generator(cfg.seed, index)
    x_tgt = concept_latents(ctx, prompt, cfg.target_images, gen)
    timesteps = ctx.timesteps()
    base_prompt = token_prompt(d, [cfg.n_tokens, prompt])
    vocab = Vocabulary(d)
    E = vocab.embeddings  # (V, width)
    u = torch.full((cfg.n_tokens, len(vocab)), 1.0 / len(vocab), requires_grad=True)
    opt = torch.optim.Adam([u], lr=cfg.lr, weight_decay=cfg.weight_decay)
    fixed = draw_batch(x_tgt, timesteps, cfg.batch, generator(cfg.seed, index, 1))

    def fixed_loss(token_ids: torch.Tensor) -> torch.Tensor:
        return denoising_loss(d, base_prompt.with_tokens(token_ids).condition(d), fixed)

    candidates, trace = [], []
    for it in range(cfg.iterations):
        P_prime = _SampledOneHot.apply(u, gen) @ E
        loss = denoising_loss(d, base_prompt.condition(d, P_prime), draw_batch(x_tgt, timesteps, cfg.batch, gen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            u.copy_(project_simplex(u))
        trace.append(loss.item())
        if (it + 1) % cfg.select_every == 0 or it + 1 == cfg.iterations:
            candidates.append(vocab.ids[u.detach().argmax(-1)])
    token_ids, _ = best_tokens(candidates, fixed_loss)
    found = base_prompt.with_tokens(token_ids)
    return FoundPrompt(found, prompt_text(d, found), exact_text=exact_text(d, found), trace=trace)
