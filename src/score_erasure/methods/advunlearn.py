"""AdvUnlearn (Zhang et al., NeurIPS 2024): ESD moved into the text encoder, trained against a soft-prompt adversary.

The network is frozen and the text encoder φ is trained (every weight but its embedding tables), so the erased
model is the base network reading an erased encoder, a plug-in for any model that shares the encoder. With ε_φ
the frozen network reading φ, and ε_0 the base model (the network reading φ_0):

    inner   δ* = argmin_δ ‖ε_φ(z_t, t, φ([δ; c])) − ε_0(z_t, t, φ_0(c))‖²
    outer   L  = ‖ε_φ(z_t, t, φ([δ*; c])) − [ε_0(z_t, t, ∅) − η (ε_0(z_t, t, c) − ε_0(z_t, t, ∅))]‖²
                 + γ ‖ε_φ(z_r, t, φ(c_r)) − ε_0(z_r, t, c_r)‖²

δ is `attack_tokens` free input vectors placed after the start token: the adversary finds the prefix under which
the current encoder still makes the network draw c as the base did, and the outer step applies ESD's
negative-guidance target under that prefix; the retain term holds the predictions for other prompts c_r. The
first `warmup` steps run without the adversary (δ empty), as the reference does.

Defaults are the reference's, with its 1,000 steps at lr 1e-5 translated as this toolkit translates ESD's (200 at
1e-4, the warm-up 200 -> 40): a fresh attack every step, 30 Adam steps at lr 1e-3 on one token initialised from a
random vocabulary token; γ 0.3 over a retain batch of 5; η 1; z_t from DDIM at guidance 3. Our reading, where
this toolkit differs: z_t and z_r come from trajectories of the base model cached before training (the reference
samples afresh at every step, from the same distribution); each attack step starts from a fresh gradient (the
reference's loop never zeroes it, so its steps follow the running sum); the retained prompts are the spec's (the
reference: 243 COCO object prompts).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from score_erasure import parallel
from score_erasure.methods.loop import Checkpointing, Trace, finetune
from score_erasure.methods.trce import in_turn, trajectory_points
from score_erasure.prompting.tokens import TokenPrompt, Vocabulary, token_prompt
from score_erasure.spec import ConceptSpec


class AdvUnlearnConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    iterations: int = Field(200, ge=1)
    lr: float = Field(1e-4, gt=0)
    warmup: int = Field(40, ge=0)  # first steps without the adversary
    eta: float = 1.0  # ESD's negative-guidance scale
    attack_steps: int = Field(30, ge=0)  # 0: ESD on the encoder, no adversary
    attack_lr: float = Field(1e-3, gt=0)
    attack_tokens: int = Field(1, ge=1)  # k
    retain_weight: float = Field(0.3, ge=0)  # γ
    retain_batch: int = Field(5, ge=1)
    trajectories: int = Field(16, ge=1)  # cached base trajectories of the target prompts, in turn (one each at least)
    retain_trajectories: int = Field(16, ge=1)  # of the retained prompts, in turn
    steps: int = Field(25, ge=2)  # DDIM schedule of the trajectories
    guidance: float = 3.0
    chunk: int = Field(16, ge=1)  # trajectories sampled at once
    seed: int = 0


def inner_attack(denoiser, prompt: TokenPrompt, v: torch.Tensor, draw, steps: int, lr: float) -> torch.Tensor:
    """δ*: `steps` Adam steps on the slot vectors v of `prompt` lowering ‖ε_φ(z_t, t, φ([v; c])) − e_0‖², each at
    a fresh point (z_t, t, e_0 = ε_0(z_t, t, c)) from `draw()`; gradients reach only v."""
    v = v.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([v], lr=lr)
    for _ in range(steps):
        z_t, t, e_0 = draw()
        loss = F.mse_loss(denoiser.predict(z_t, t, prompt.condition(denoiser, v)), e_0)
        (v.grad,) = torch.autograd.grad(loss, [v])
        opt.step()
    return v.detach()


def advunlearn(denoiser, spec: ConceptSpec, cfg: AdvUnlearnConfig, checkpointing: Checkpointing | None = None,
               show_progress: bool = True) -> Trace:
    denoiser.network.requires_grad_(False)
    targets, retain = spec.target_prompts, spec.retain_prompts or spec.anchor_prompts
    pick = in_turn(len(targets), cfg.trajectories)
    pick_r = [j % len(retain) for j in range(cfg.retain_trajectories)]
    # everything of ε_0, before φ moves: conditionings and trajectories
    c0, c0_r, uncond0 = denoiser.encode(targets), denoiser.encode(retain), denoiser.unconditional(1)
    z, timesteps = trajectory_points(denoiser, c0[pick], cfg, cfg.seed, cfg.steps, "advunlearn: trajectories",
                                     show_progress)
    z_r, _ = trajectory_points(denoiser, c0_r[pick_r], cfg, cfg.seed + 1, cfg.steps, "advunlearn: retained",
                               show_progress)
    plain = [token_prompt(denoiser, [p]) for p in targets]
    prefixed = [token_prompt(denoiser, [cfg.attack_tokens, p]) for p in targets]
    retained = [token_prompt(denoiser, [p]) for p in retain]
    vocabulary = Vocabulary(denoiser) if cfg.attack_steps else None
    denoiser.text_encoder.requires_grad_(False)
    params = denoiser.text_encoder_weights()
    for p in params.values():
        p.requires_grad_(True)

    def attack(i: int, rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
        own = [j for j, p in enumerate(pick) if p == i]

        def draw():
            j, n = own[int(rng.integers(len(own)))], int(rng.integers(cfg.steps))
            with torch.no_grad():
                return z[n, j:j + 1], timesteps[n], denoiser.predict(z[n, j:j + 1], timesteps[n], c0[i:i + 1])

        start = vocabulary.embeddings[torch.randint(len(vocabulary), (cfg.attack_tokens,), generator=gen)]
        return inner_attack(denoiser, prefixed[i], start, draw, cfg.attack_steps, cfg.attack_lr)

    def step(k: int):
        rng = np.random.default_rng(parallel.step_key(cfg.seed, k))
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        j, n = int(rng.integers(len(pick))), int(rng.integers(cfg.steps))
        i, z_t, t = pick[j], z[n, j:j + 1], timesteps[n]
        with torch.no_grad():
            e_u, e_c = denoiser.predict(torch.cat([z_t, z_t]), t, torch.cat([uncond0, c0[i:i + 1]])).chunk(2)
            target = e_u - cfg.eta * (e_c - e_u)
        adversarial = k >= cfg.warmup and cfg.attack_steps > 0
        cond = prefixed[i].condition(denoiser, attack(i, rng, gen)) if adversarial else plain[i].condition(denoiser)
        erase = F.mse_loss(denoiser.predict(z_t, t, cond), target)
        rows = rng.choice(cfg.retain_trajectories, size=min(cfg.retain_batch, cfg.retain_trajectories), replace=False)
        at = rng.integers(cfg.steps, size=len(rows))
        z_rt, t_r = z_r[at, rows], timesteps[at]
        with torch.no_grad():
            e_r = denoiser.predict(z_rt, t_r, c0_r[[pick_r[r] for r in rows]])
        c_r = torch.cat([retained[pick_r[r]].condition(denoiser) for r in rows])
        keep = F.mse_loss(denoiser.predict(z_rt, t_r, c_r), e_r)
        return erase + cfg.retain_weight * keep, {"erase": erase.item(), "retain": keep.item(),
                                                  "adversarial": float(adversarial)}

    trace = finetune(params, step, cfg.iterations, cfg.lr, label="advunlearn", checkpointing=checkpointing,
                     show_progress=show_progress)
    denoiser.text_encoder.requires_grad_(False)
    return trace
