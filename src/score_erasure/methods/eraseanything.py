"""EraseAnything (Gao et al., ICML 2025), for FLUX: one LoRA on the text stream's queries and keys of the joint
attention, trained by a bi-level problem whose two levels alternate step by step.

Lower level (even steps), erasure, at rate α_low:

    L_low = λ1 ‖v_θ(z_t, t, p) − [v_0(z_t, t, p_a) − η (v_0(z_t, t, p) − v_0(z_t, t, p_a))]‖²
            + λ2 Σ_i Σ_{j ∈ w} ‖A[·, ·, i, j]‖₂

z_t reached by sampling the current model on p; v_0 the base model; p_a the prompt's anchor; A the softmax
attention of the last double-stream block over the joint [text; image] sequence, from every query i to the
keyword's tokens j, its norm over the batch and the heads: the keyword stops being attended to.

Upper level (odd steps), preservation, at rate α_up:

    L_up = λ3 ‖v_θ(x_t, t, p_r) − target(x_0, ε, t)‖² + λ4 log( exp(s_u/τ) / Σ_{j ∈ {u, irr_1..K}} exp(s_j/τ) )

the model's own training loss on the base model's images x_0 of retained prompts p_r (the paper's irrelevant
concepts), and the reverse self-contrastive term: s are cosine similarities to q, the keyword's feature in a
synonym prompt (another target prompt of the concept, no gradient); u is the keyword's feature in p (with
gradient), irr_k those of K retained prompts (no gradient). Minimised, it moves the keyword's feature away from its
synonyms' relative to unrelated words.

Defaults are the paper's where it and the released code differ (1,000 steps, α_low 1e-3 and α_up 5e-4; the code:
200 steps, one rate of 1e-3), and the code's elsewhere (rank 8 on `add_q_proj` and `add_k_proj`, λ 1, 0.001, 0.1,
0.1, K 3, τ 0.07, η 1, guidance 3). Our reading: the two rates alternate on one Adam; z_t stops at a random step as
ESD's does (the code samples to the end and then draws t); v_0 is a frozen copy of the base (the code's references
come from the LoRA model itself); the upper level's images are the base model's samples of the spec's retained
prompts (the paper: LLM-chosen irrelevant concepts; the code: the instance images); a "feature" is the mean of the
word's keys (the text stream's, normalised) in the last double-stream block at the step's (x_t, t); synonyms are
the spec's other target prompts (the code: WordNet), and no word shuffling. FLUX only.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from score_erasure import parallel
from score_erasure.methods.loop import Checkpointing, Trace, finetune, lora_trainable, merge_lora
from score_erasure.methods.mace import matched_positions, token_ids
from score_erasure.spec import ConceptSpec


class EraseAnythingConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    group: str = "xattn"
    targets: str = r"add_[qk]_proj$"  # the LoRA's layers inside `group`: the text stream's queries and keys
    rank: int = Field(8, ge=1)
    iterations: int = Field(1000, ge=1)
    lr_erase: float = Field(1e-3, gt=0)  # α_low
    lr_preserve: float = Field(5e-4, gt=0)  # α_up
    eta: float = 1.0
    lambda_esd: float = Field(1.0, ge=0)
    lambda_attn: float = Field(1e-3, ge=0)
    lambda_lora: float = Field(0.1, ge=0)
    lambda_rsc: float = Field(0.1, ge=0)
    irrelevant: int = Field(3, ge=1)  # K
    tau: float = Field(0.07, gt=0)
    steps: int = Field(28, ge=2)
    guidance: float = 3.0
    images: int = Field(8, ge=1)  # base samples of the retained prompts (upper level)
    seed: int = 0


class JointAttention:
    """While active, captures the last double-stream block's queries and keys of both streams (after their norms)
    and its rotary embedding: the attention map and the text keys are computed from them."""

    def __init__(self, network):
        self.attn = network.transformer_blocks[-1].attn
        self.found: dict[str, torch.Tensor] = {}

    def __enter__(self):
        def keep(name):
            return lambda _module, _args, out: self.found.__setitem__(name, out)

        self.handles = [getattr(self.attn, n).register_forward_hook(keep(n))
                        for n in ("norm_q", "norm_k", "norm_added_q", "norm_added_k")]
        self.handles.append(self.attn.register_forward_pre_hook(
            lambda _m, _a, kwargs: self.found.__setitem__("rope", kwargs.get("image_rotary_emb")), with_kwargs=True))
        return self

    def __exit__(self, *_):
        for h in self.handles:
            h.remove()

    def probs(self) -> torch.Tensor:
        """softmax(QKᵀ/√d) over the joint sequence, text first: (B, heads, L, L)."""
        from diffusers.models.embeddings import apply_rotary_emb

        q = torch.cat([self.found["norm_added_q"], self.found["norm_q"]], dim=1)
        k = torch.cat([self.found["norm_added_k"], self.found["norm_k"]], dim=1)
        if self.found.get("rope") is not None:
            q = apply_rotary_emb(q, self.found["rope"], sequence_dim=1)
            k = apply_rotary_emb(k, self.found["rope"], sequence_dim=1)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, heads, L, d)
        return (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)

    def text_keys(self) -> torch.Tensor:
        """The text stream's keys after their norm, heads joined: (B, L_text, heads·d)."""
        return self.found["norm_added_k"].flatten(2)


def attention_to(probs: torch.Tensor, columns: list[int]) -> torch.Tensor:
    """Σ_i Σ_{j in columns} ‖A[:, :, i, j]‖₂, the norm over batch and heads: attention paid to those tokens."""
    return probs[..., columns].permute(2, 3, 0, 1).flatten(2).norm(dim=-1).sum()


def eraseanything(denoiser, spec: ConceptSpec, cfg: EraseAnythingConfig, checkpointing: Checkpointing | None = None,
                  show_progress: bool = True) -> Trace:
    eps_0 = denoiser.frozen_copy()
    targets, anchors = spec.target_prompts, spec.anchor_prompts
    retain = spec.retain_prompts or anchors
    c, c_a, c_r = denoiser.encode(targets), denoiser.encode(anchors), denoiser.encode(retain)
    length = denoiser.token_states(c).shape[1]
    ids = token_ids(denoiser, targets + anchors + retain)
    keyword = [matched_positions(ids[i], ids[len(targets) + i], length)[1] or list(range(1, len(ids[i]) - 1))
               for i in range(len(targets))]  # each target's own words: where it differs from its anchor
    words = [list(range(len(r))) for r in ids[2 * len(targets):]]  # a retained prompt's real tokens
    timesteps = denoiser.timesteps(cfg.steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    pick = [j % len(retain) for j in range(cfg.images)]
    with torch.no_grad():
        x0_r = eps_0.sample(c_r[pick], cfg.steps, guidance=cfg.guidance, generator=gen)  # the upper level's images
    params = lora_trainable(denoiser, cfg.group, cfg.rank, cfg.seed, pattern=cfg.targets)
    capture = JointAttention(denoiser.network)

    def feature(keys: torch.Tensor, positions: list[int]) -> torch.Tensor:
        return keys[positions].mean(0)

    def lower(rng: np.random.Generator, gen: torch.Generator):
        i, n = int(rng.integers(len(targets))), int(rng.integers(cfg.steps))
        z_t, t = denoiser.sample(c[i:i + 1], cfg.steps, until=n, guidance=cfg.guidance, generator=gen), timesteps[n]
        with torch.no_grad():
            v_a, v_p = eps_0.predict(torch.cat([z_t, z_t]), t, torch.cat([c_a[i:i + 1], c[i:i + 1]])).chunk(2)
        with capture:
            v = denoiser.predict(z_t, t, c[i:i + 1])
        esd = F.mse_loss(v, v_a - cfg.eta * (v_p - v_a))
        attn = attention_to(capture.probs(), keyword[i])
        return cfg.lambda_esd * esd + cfg.lambda_attn * attn, {"esd": esd.item(), "attn": attn.item()}

    def upper(rng: np.random.Generator, gen: torch.Generator):
        j = int(rng.integers(cfg.images))
        t = timesteps[int(rng.integers(cfg.steps))]
        noise = torch.randn(x0_r[j:j + 1].shape, generator=gen).to(x0_r)
        x_t = denoiser.add_noise(x0_r[j:j + 1], noise, t)
        keep = F.mse_loss(denoiser.predict(x_t, t, c_r[pick[j]:pick[j] + 1]), denoiser.target(x0_r[j:j + 1], noise, t))
        i = int(rng.integers(len(targets)))
        synonym = int(rng.choice([s for s in range(len(targets)) if s != i] or [i]))
        others = rng.choice(len(retain), size=min(cfg.irrelevant, len(retain)), replace=False)
        conds = torch.cat([c[[i, synonym]], c_r[others]])
        with capture:
            denoiser.predict(x_t.expand(len(conds), *x_t.shape[1:]), t, conds)
        keys = capture.text_keys()
        u = feature(keys[0], keyword[i])
        with torch.no_grad():
            q = feature(keys[1], keyword[synonym])
            irr = torch.stack([feature(keys[2 + m], words[r]) for m, r in enumerate(others)])
        s = torch.cat([F.cosine_similarity(q, u, dim=0)[None], F.cosine_similarity(q[None], irr, dim=-1)]) / cfg.tau
        rsc = s[0] - torch.logsumexp(s, 0)
        return cfg.lambda_lora * keep + cfg.lambda_rsc * rsc, {"lora": keep.item(), "rsc": rsc.item()}

    def step(k: int):
        rng = np.random.default_rng(parallel.step_key(cfg.seed, k))
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        return lower(rng, gen) if k % 2 == 0 else upper(rng, gen)

    trace = finetune(params, step, cfg.iterations, cfg.lr_erase, label="eraseanything", checkpointing=checkpointing,
                     show_progress=show_progress, lr_at=lambda k: cfg.lr_erase if k % 2 == 0 else cfg.lr_preserve)
    merge_lora(denoiser.network)
    return trace
