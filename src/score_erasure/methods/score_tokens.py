"""SCORE carried over to autoregressive generators (`score-ar`): adversarial independence between the concept and
what the model draws, with code positions in place of timesteps.

    r_e        ~ p_θ(· | c_e)                    on-policy, as SCORE samples z_l from the model being trained
    L_erase    = (1/N) Σ_i KL( q_i ‖ p_θ(·|r_e,<i, c_e) ),  log q_i = log softmax(l_0(c_a) − η(l_0(c_e) − l_0(c_a)))
    L_unc      = (1/N) Σ_i KL( p_0(·|r_e,<i, ∅) ‖ p_θ(·|r_e,<i, ∅) )
    L_pres     = (1/N) Σ_i KL( p_0(·|r_r,<i, c_r) ‖ p_θ(·|r_r,<i, c_r) ),  r_r the base's codes of anchors and
                 retained prompts (SCORE's `pres_anchors`)
    x̂(c, r)    = Σ_v p_θ(v | r_<i, c) e_v on the code grid (`expected_latents`): the clean estimate's analogue
    L_D(φ)     = −½ log D(x̂(c_e, r_e)) − ½ log(1 − D(x̂(c_r, r_r)));   L_adv = −log(1 − D(x̂(c_e, r_e)))
    L          = L_erase + α L_unc + λ_pres L_pres + λ_adv L_adv

Our reading of SCORE on tokens (the paper is about diffusion and flow models): the guidance algebra moves onto
logits, as the generator samples; the discriminator reads the expected codebook vectors, which carry the
gradient of every code distribution; the saliency mask is left out (the attention and feed-forward layers train,
S-VARE's choice, at S-VARE's budget), so that the AR rows differ in the objective only. Î = log 2 − L_D on a pair
D has not trained on is logged as `mi`, as in `score`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from score_erasure import parallel
from score_erasure.backends.tokens import TokenConditioning, code_kl
from score_erasure.methods.loop import Checkpointing, Trace, finetune, trainable
from score_erasure.methods.score import Discriminator, discriminator_loss
from score_erasure.spec import ConceptSpec


class ScoreTokensConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    group: str = "attention+ffn"
    iterations: int = Field(500, ge=1)
    lr: float = Field(5e-5, gt=0)
    eta: float = Field(1.0, ge=0)
    guidance: float = 5.0  # the model's when it draws r
    alpha_unc: float = Field(0.5, ge=0)
    lambda_pres: float = Field(8.0, ge=0)  # `score`'s preservation weight
    pres_batch: int = Field(4, ge=1)
    sequences_per_prompt: int = Field(4, ge=1)  # base sequences r_r per anchor or retained prompt
    adversarial: bool = True
    lambda_adv_start: float = Field(0.1, ge=0)
    lambda_adv_end: float = Field(0.5, ge=0)
    adv_ramp: int = Field(50, ge=1)
    d_lr: float = Field(1e-4, gt=0)
    d_pretrain: int = Field(50, ge=0)
    d_width: int = Field(32, ge=1)
    seed: int = 0


def score_tokens(generator, spec: ConceptSpec, cfg: ScoreTokensConfig, checkpointing: Checkpointing | None = None,
                 show_progress: bool = True) -> Trace:
    base = generator.frozen_copy()
    both = generator.encode(spec.target_prompts + spec.anchor_prompts)  # one padded width: rows concatenate
    c_e, c_a = both[:len(spec.target_prompts)], both[len(spec.target_prompts):]
    kept = list(dict.fromkeys([*(spec.retain_prompts or []), *spec.anchor_prompts]))
    c_r = generator.encode([p for p in kept for _ in range(cfg.sequences_per_prompt)])
    with torch.no_grad():
        r_r = base.sample_seeds(c_r, [cfg.seed + i for i in range(len(c_r))], cfg.guidance)
        log_p_r = torch.log_softmax(base.image_logits(c_r, r_r).float(), -1)
    uncond = generator.unconditional(c_e)  # the same width as c_e and c_a
    side = generator.expected_latents(log_p_r[:1])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        D = Discriminator(side.shape[1], cfg.d_width, side.shape[-1])
    opt_D = torch.optim.Adam(D.parameters(), lr=cfg.d_lr, betas=(0.5, 0.999))

    def train_D(x_concept: torch.Tensor, x_other: torch.Tensor) -> None:
        D.train()
        loss = discriminator_loss(D, x_concept.detach(), x_other.detach())
        opt_D.zero_grad(set_to_none=True)
        loss.backward()
        opt_D.step()

    def draw(k: int, stream: int) -> tuple[int, torch.Tensor, list[int]]:
        rng = np.random.default_rng(parallel.step_key(cfg.seed, stream, k))
        i = int(rng.integers(len(c_e)))
        r_e = generator.sample_seeds(c_e[i:i + 1], [rng.integers(2**31)], cfg.guidance)
        rows = rng.choice(len(c_r), size=min(cfg.pres_batch, len(c_r)), replace=False).tolist()
        return i, r_e, rows

    if cfg.adversarial and not (checkpointing is not None and checkpointing.resume and checkpointing.path is not None
                                and checkpointing.path.exists()):
        for k in range(cfg.d_pretrain):  # D warmed up on the base model's own readings
            i, r_e, rows = draw(k, 2)
            with torch.no_grad():
                x_e = base.expected_latents(base.image_logits(c_e[i:i + 1], r_e))
            train_D(x_e, base.expected_latents(log_p_r[rows]))

    def step(k: int):
        i, r_e, rows = draw(k, 3)
        ref = c_a[i:i + 1] if i < len(c_a) else uncond[i:i + 1]
        with torch.no_grad():
            l_e, l_a, l_u = base.image_logits(TokenConditioning.cat([c_e[i:i + 1], ref, uncond[i:i + 1]]),
                                              r_e.expand(3, -1)).float().chunk(3)
            log_q = torch.log_softmax(l_a - cfg.eta * (l_e - l_a), -1)
        pred_e, pred_u = generator.image_logits(TokenConditioning.cat([c_e[i:i + 1], uncond[i:i + 1]]),
                                                r_e.expand(2, -1)).float().chunk(2)
        pred_r = generator.image_logits(c_r[rows], r_r[rows]).float()
        erase, unc = code_kl(log_q, pred_e), code_kl(torch.log_softmax(l_u, -1), pred_u)
        pres = code_kl(log_p_r[rows], pred_r)
        loss = erase + cfg.alpha_unc * unc + cfg.lambda_pres * pres
        terms = {"erase": erase.item(), "unc": unc.item(), "pres": pres.item()}
        if cfg.adversarial:
            x_e, x_r = generator.expected_latents(pred_e), generator.expected_latents(pred_r)
            with torch.no_grad():
                D.eval()
                terms["mi"] = math.log(2) - discriminator_loss(D, x_e, x_r).item()
            train_D(x_e, x_r)
            D.eval()
            adv = F.softplus(D(x_e)).mean()
            ramp = min(1.0, k / cfg.adv_ramp)
            loss = loss + (cfg.lambda_adv_start + ramp * (cfg.lambda_adv_end - cfg.lambda_adv_start)) * adv
            terms["adv"] = adv.item()
        return loss, terms

    return finetune(trainable(generator, cfg.group), step, cfg.iterations, cfg.lr, label="score-ar",
                    checkpointing=checkpointing, extra_modules={"D": D}, extra_optimizers={"D": opt_D},
                    show_progress=show_progress)
