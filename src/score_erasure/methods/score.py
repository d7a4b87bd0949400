"""SCORE (arXiv 2509.12024), as reconstructed in research/score-method.md §1: erasure as adversarial
independence between the concept C and the model's one-step clean estimate x0_hat.

    L(θ) = L_late + λ_adv L_adv + λ_traj (L_early + α L_unc) + λ_pres L_pres,    grad ← M ⊙ grad

    L_late  = ‖ε_θ(z_l, t_l, c_e) − [ε_0(z_l, t_l, c_a) − η(ε_0(z_l, t_l, c_e) − ε_0(z_l, t_l, c_a))]‖²   (k_l ≥ K_e)
    L_early = ‖ε_θ(z_e, t_e, c_e) − [ε_0(z_e, t_e, ∅) + η(ε_0(z_e, t_e, c_e) − ε_0(z_e, t_e, ∅))]‖²   (k_e < K_e)
    L_unc   = ‖ε_θ(z, t, ∅) − ε_0(z, t, ∅)‖² at both z_e and z_l, with gradients (ANT computed it without)
    L_pres  = ‖ε_θ(z_r, t, c_r) − ε_0(z_r, t, c_r)‖², z_r a base-model sample of a retained prompt, noised
              (`pres_anchors`: of an anchor too; `pres_batch` samples a step)
    L_D(φ)  = −½ log D(x0_hat(c_e)) − ½ log(1 − D(x0_hat(c_0)))      (c_0: matched anchors and retained prompts)
    L_adv   = −log(1 − D(x0_hat(c_e)))                               (non-saturating), λ_adv ramped
    Î(C; X) = log 2 − L_D on a batch D has not trained on (a variational lower bound on the MI)

c_a is the reference the concept is steered away from: ∅ (`reference="empty"`, ANT's and ESD's choice) or
the target prompt's matched anchor (`reference="anchor"`: "a star on fire" is pushed away from fire relative
to "a star", not away from everything the prompt says). K_e = 0 (`early_fraction = 0`) drops L_early: the
erasure term then spans every step, for concepts a model fixes at its first step.

M keeps, per tensor, the weights in the top `saliency_keep` fraction of |Σ ∇L_ANT| for every
(target prompt, seed) pair: the intersection of the maps (SalUn's rule; ANT's released mask kept the
bottom half, which we do not copy). With several concepts (our reading), each concept's first
`saliency_prompts` targets give its own intersection and M is their union: a mask from the first concept's
prompts alone left little of the others' weights to train (docs/methods.md, "Multi-concept erasure").
`ant` is this module with the adversarial term off.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from score_erasure import parallel
from score_erasure.methods.loop import Checkpointing, Trace, finetune, trainable
from score_erasure.spec import ConceptSpec, mentions


class ScoreConfig(BaseModel):
    """Every component can be switched off: ablations are configs. The defaults are the fine-tune that `ant`,
    `trace` and `score-robust` share; `score` adds SCORE_PRESERVATION to them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    group: str = "full"
    iterations: int = Field(100, ge=1)  # enough on the embedded model; 200 cost fidelity and time (docs/methods.md)
    # `iterations` for each concept erased at once, not shared by them all: a step trains on one target prompt, so
    # k concepts in a shared budget get 1/k of it each, against a preservation term that acts on every step.
    iterations_per_concept: bool = False
    lr: float = Field(5e-4, gt=0)  # ANT's; 1e-4 barely erased on the embedded model (docs/methods.md)
    steps: int = Field(25, ge=1)
    # K_e / steps. ANT used 7 of 50 (nudity) to 3 of 50 (art); the embedded world fixes style and fire at the
    # first of 25 steps, so any early stage kept as it was keeps the concept (docs/methods.md).
    early_fraction: float = Field(0.0, ge=0, lt=1)
    eta: float = 1.0
    reference: Literal["empty", "anchor"] = "anchor"
    start_guidance: float = 3.0
    erase: bool = True
    trajectory: bool = True
    preserve: bool = True
    adversarial: bool = True
    saliency: bool = True
    lambda_traj: float = Field(1.0, ge=0)
    alpha_unc: float = Field(0.5, ge=0)
    lambda_pres: float = Field(2.0, ge=0)
    pres_batch: int = Field(1, ge=1)  # retained images per step in L_pres (all at the step's t_l)
    pres_anchors: bool = False  # L_pres also on the anchors' own images: the concept turns into its anchor, unmoved
    lambda_adv_start: float = Field(0.1, ge=0)
    lambda_adv_end: float = Field(0.5, ge=0)
    adv_ramp: int = Field(50, ge=1)
    d_lr: float = Field(1e-4, gt=0)
    d_pretrain: int = Field(50, ge=0)
    d_width: int = Field(32, ge=1)
    saliency_seeds: tuple[int, ...] = (24, 42, 98, 403, 3407)
    saliency_prompts: int = 2
    saliency_iterations: int = 1
    saliency_keep: float = 0.8  # per map; the intersection of 10 maps then keeps ~20% of the UNet
    bank_per_prompt: int = 1
    seed: int = 0


# `score`'s preservation (issue #20): L_pres on four images a step, the anchors' among them, at weight 8. It takes
# the neutral images' drift below the base model's own seed-to-seed floor on object and style (docs/results.md,
# "SCORE's preservation"); the old form (one retained image, weight 2) is `pres_anchors = false`, `pres_batch = 1`,
# `lambda_pres = 2`.
SCORE_PRESERVATION = {"pres_anchors": True, "pres_batch": 4, "lambda_pres": 8.0}
# `score`'s defaults beyond the shared fine-tune: that preservation, and with several concepts the iterations of
# one for each (the preservation held four concepts' shared 100 back: docs/methods.md, "Multi-concept erasure").
SCORE_DEFAULTS = {**SCORE_PRESERVATION, "iterations_per_concept": True}


class Discriminator(nn.Module):
    """A small spectrally normalised CNN on clean latents: strided convolutions down to ~4x4, then a logit."""

    def __init__(self, channels: int, width: int, size: int):
        super().__init__()
        layers: list[nn.Module] = [spectral_norm(nn.Conv2d(channels, width, 3, padding=1)), nn.LeakyReLU(0.2)]
        while size > 4:
            layers += [spectral_norm(nn.Conv2d(width, width * 2, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            width, size = width * 2, size // 2
        self.body = nn.Sequential(*layers)
        self.head = spectral_norm(nn.Linear(width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x.float()).mean(dim=(2, 3))).squeeze(-1)


def discriminator_loss(D: nn.Module, x_concept: torch.Tensor, x_other: torch.Tensor) -> torch.Tensor:
    """Balanced BCE: label 1 for the concept's clean estimates, 0 for the others."""
    return 0.5 * (F.softplus(-D(x_concept)).mean() + F.softplus(D(x_other)).mean())


def _generator(seed: int, *key: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, *key]).generate_state(1)[0]))


class ScoreTraining:
    """The state of one SCORE run; `step` is one iteration of the loop in §1.7."""

    def __init__(self, denoiser, spec: ConceptSpec, cfg: ScoreConfig):
        self.denoiser, self.cfg = denoiser, cfg
        self.eps_0 = denoiser.frozen_copy()
        self.c_e = denoiser.encode(spec.target_prompts)
        self.blocks = concept_blocks(spec)
        self.c_a = denoiser.encode(spec.anchor_prompts)
        retained = spec.retain_prompts or spec.anchor_prompts
        negatives = list(dict.fromkeys([*retained, *spec.anchor_prompts]))  # retained ones first
        self.c_0 = denoiser.encode(negatives)
        self.c_r = self.c_0[:len(dict.fromkeys(retained))]
        self.uncond = denoiser.unconditional(1)
        self.t = denoiser.timesteps(cfg.steps)
        self.k_e = round(cfg.early_fraction * cfg.steps)  # 0: no early stage, the erasure term spans all steps
        self.bank_e = self._bank(self.c_e)  # base-model clean latents of the concept's prompts
        self.bank_0 = self._bank(self.c_0)  # and of the C=0 prompts, the retained ones first
        in_r = self.bank_0[1] < len(self.c_r)
        if cfg.pres_anchors:  # L_pres on every C=0 prompt: the retained ones and the anchors
            self.c_r, self.bank_r = self.c_0, self.bank_0
        else:
            self.bank_r = (self.bank_0[0][in_r], self.bank_0[1][in_r])
        x = self.bank_0[0]
        with torch.random.fork_rng(devices=[]):  # D's initial weights follow the seed, not the caller's RNG state
            torch.manual_seed(cfg.seed)
            self.D = Discriminator(x.shape[1], cfg.d_width, x.shape[-1]).to(x.device)  # fp32 whatever the model's dtype
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=cfg.d_lr, betas=(0.5, 0.999))

    @torch.no_grad()
    def _bank(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`bank_per_prompt` base samples per prompt: (latents, prompt index)."""
        n = self.cfg.bank_per_prompt
        cond_rep = cond.repeat_interleave(n, 0)
        x0 = self.eps_0.sample(cond_rep, self.cfg.steps, guidance=self.cfg.start_guidance,
                               generator=_generator(self.cfg.seed, 1, len(cond)))
        return x0, torch.arange(len(cond)).repeat_interleave(n)

    def _noised(self, bank, idx: torch.Tensor, t: torch.Tensor, gen) -> tuple[torch.Tensor, torch.Tensor]:
        x0, prompt = bank[0][idx], bank[1][idx]
        return self.denoiser.add_noise(x0, torch.randn(x0.shape, generator=gen).to(x0), t), prompt

    def pretrain_discriminator(self) -> None:
        """Warm D up on the base model (ε_0) so the adversarial signal is informative from step one."""
        for k in range(self.cfg.d_pretrain):
            gen = _generator(self.cfg.seed, 2, k)
            rng = np.random.default_rng([self.cfg.seed, 2, k])
            t = self.t[torch.from_numpy(rng.integers(self.k_e, self.cfg.steps, size=4))]
            with torch.no_grad():
                x = []
                for bank, cond in ((self.bank_e, self.c_e), (self.bank_0, self.c_0)):
                    z, p = self._noised(bank, torch.from_numpy(rng.integers(len(bank[0]), size=4)), t, gen)
                    x.append(self.eps_0.clean_estimate(z, t, self.eps_0.predict(z, t, cond[p])))
            self._train_discriminator(*x)

    def _train_discriminator(self, x_concept: torch.Tensor, x_other: torch.Tensor) -> float:
        self.D.train()
        loss = discriminator_loss(self.D, x_concept.detach(), x_other.detach())
        self.opt_D.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_D.step()
        return loss.item()

    def reference(self, i: int) -> torch.Tensor:
        """c_a for target i: its anchor, or ∅ (also for targets beyond the spec's, which have no anchor)."""
        return self.c_a[i:i + 1] if self.cfg.reference == "anchor" and i < len(self.c_a) else self.uncond

    def lambda_adv(self, k: int) -> float:
        ramp = min(1.0, k / max(1, self.cfg.adv_ramp))
        return self.cfg.lambda_adv_start + ramp * (self.cfg.lambda_adv_end - self.cfg.lambda_adv_start)

    def step(self, k: int) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, d, uncond = self.cfg, self.denoiser, self.uncond
        rng = np.random.default_rng(parallel.step_key(cfg.seed, 3, k))
        gen = _generator(cfg.seed, *parallel.step_key(3, k))
        i = int(rng.integers(len(self.c_e)))
        k_e, k_l = int(rng.integers(max(1, self.k_e))), int(rng.integers(self.k_e, cfg.steps))
        c_e, t_e, t_l = self.c_e[i:i + 1], self.t[k_e:k_e + 1], self.t[k_l:k_l + 1]
        z_e = d.sample(c_e, cfg.steps, until=k_e, guidance=cfg.start_guidance, generator=gen)
        z_l = d.sample(c_e, cfg.steps, start=k_e, until=k_l, guidance=cfg.start_guidance, x=z_e)
        z_r, p = self._noised(self.bank_r, torch.from_numpy(rng.integers(len(self.bank_r[0]), size=cfg.pres_batch)),
                              t_l, gen)
        c_r = self.c_r[p]
        # ε_θ and ε_0 at every (x, t, c) the terms need, each in one batched call.
        inputs = [(z_l, t_l, c_e), (z_e, t_e, c_e), (z_e, t_e, uncond), (z_l, t_l, uncond), (z_r, t_l, c_r)]
        pred_l, pred_e, pred_u_e, pred_u_l, pred_r = d.predict_many(inputs)
        with torch.no_grad():
            e_l, e_e, e_u_e, e_u_l, e_r = self.eps_0.predict_many(inputs)
            e_a_l = e_u_l if cfg.reference == "empty" else self.eps_0.predict(z_l, t_l, self.reference(i))
        terms: dict[str, float] = {}
        loss = torch.zeros(())
        if cfg.erase:
            late = F.mse_loss(pred_l, e_a_l - cfg.eta * (e_l - e_a_l))
            loss = loss + late
            terms["late"] = late.item()
        if cfg.trajectory:
            early = F.mse_loss(pred_e, e_u_e + cfg.eta * (e_e - e_u_e)) if self.k_e else torch.zeros(())
            unc = F.mse_loss(pred_u_e, e_u_e) + F.mse_loss(pred_u_l, e_u_l)
            loss = loss + cfg.lambda_traj * (early + cfg.alpha_unc * unc)
            terms["early"], terms["unc"] = early.item(), unc.item()
        if cfg.preserve:
            pres = F.mse_loss(pred_r, e_r)
            loss = loss + cfg.lambda_pres * pres
            terms["pres"] = pres.item()
        if cfg.adversarial:
            x_e = d.clean_estimate(z_l, t_l, pred_l)
            x_r = d.clean_estimate(z_r, t_l, pred_r)
            with torch.no_grad():  # held out: D has not trained on this pair yet
                self.D.eval()
                terms["mi"] = math.log(2) - discriminator_loss(self.D, x_e, x_r).item()
            self._train_discriminator(x_e, x_r)
            self.D.eval()  # no power-iteration update inside the generator's graph
            adv = F.softplus(self.D(x_e)).mean()  # −log(1 − D(x0_hat_e))
            loss = loss + self.lambda_adv(k) * adv
            terms["adv"] = adv.item()
        return loss, terms

    def ant_loss(self, prompt: int, gen: torch.Generator, rng: np.random.Generator) -> torch.Tensor:
        """L_ANT at one random step of one trajectory (for the saliency map)."""
        cfg, d = self.cfg, self.denoiser
        k = int(rng.integers(cfg.steps))
        c_e, t = self.c_e[prompt:prompt + 1], self.t[k:k + 1]
        z = d.sample(c_e, cfg.steps, until=k, guidance=cfg.start_guidance, generator=gen)
        inputs = [(z, t, c_e), (z, t, self.uncond)]
        pred, pred_u = d.predict_many(inputs)
        with torch.no_grad():
            e, e_u = self.eps_0.predict_many(inputs)
            e_a = e_u if cfg.reference == "empty" else self.eps_0.predict(z, t, self.reference(prompt))
        if k < self.k_e:
            cond_term = cfg.lambda_traj * F.mse_loss(pred, e_u + cfg.eta * (e - e_u))
        else:
            cond_term = F.mse_loss(pred, e_a - cfg.eta * (e - e_a))
        return cond_term + cfg.alpha_unc * F.mse_loss(pred_u, e_u)

    def saliency_gradients(self, params: dict[str, nn.Parameter], prompts: list[int]):
        """|Σ_it ∇ L_ANT| for each (target prompt, seed) pair of `prompts`, one map per pair."""
        cfg = self.cfg
        for prompt in prompts:
            for seed in cfg.saliency_seeds:
                rng = np.random.default_rng([seed, prompt])
                grads = {name: torch.zeros_like(p) for name, p in params.items()}
                for it in range(cfg.saliency_iterations):
                    loss = self.ant_loss(prompt, _generator(seed, prompt, it), rng)
                    new = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
                    for g, n in zip(grads.values(), new, strict=True):
                        if n is not None:
                            g.add_(n)
                yield {name: g.abs() for name, g in grads.items()}


def top_fraction(values: torch.Tensor, keep: float) -> torch.Tensor:
    """Boolean map of the ceil(keep · n) largest entries of `values` (ties at the threshold included)."""
    flat = values.flatten()
    n_keep = max(1, min(flat.numel(), math.ceil(keep * flat.numel())))
    return values >= flat.kthvalue(flat.numel() - n_keep + 1).values


def concept_blocks(spec: ConceptSpec) -> list[list[int]]:
    """The target prompts' indices, concept by concept. A combined spec lists each concept's pairs in one block
    (`combine_specs`); a new block starts where a prompt names a concept not named before while the current block
    already names one, so a prompt that names none (a synonym) stays in its block, and one concept is one block."""
    blocks: list[list[int]] = [[]]
    seen: set[str] = set()
    named: set[str] = set()  # the current block's
    for i, prompt in enumerate(spec.target_prompts):
        new = {c for c in spec.concepts if c not in seen and mentions(prompt, [c])}
        if new and named:
            blocks.append([])
            named = set()
        named |= new
        seen |= new
        blocks[-1].append(i)
    return blocks


def union_of_intersections(per_concept, keep: float) -> dict[str, torch.Tensor]:
    """M = ∪_concepts ∩_its maps top-`keep`(map): a weight trains if every map of some concept ranks it high."""
    mask: dict[str, torch.Tensor] = {}
    for maps in per_concept:
        for name, m in intersect_saliency(maps, keep).items():
            mask[name] = m if name not in mask else mask[name] | m
    return mask


def intersect_saliency(maps, keep: float) -> dict[str, torch.Tensor]:
    """M = ∩_maps top-`keep`(map), per tensor: a weight stays trainable only if every map ranks it high."""
    mask: dict[str, torch.Tensor] = {}
    for m in maps:
        for name, g in m.items():
            top = top_fraction(g, keep)
            mask[name] = top if name not in mask else mask[name] & top
    return mask


def score(denoiser, spec: ConceptSpec, cfg: ScoreConfig, checkpointing: Checkpointing | None = None,
          show_progress: bool = True, training: type[ScoreTraining] = ScoreTraining) -> Trace:
    """`training` lets a preset extend the loop's state and step (score-robust adds an inner attack)."""
    run = training(denoiser, spec, cfg)
    params = trainable(denoiser, cfg.group)
    mask = None
    if cfg.saliency:
        per_concept = (run.saliency_gradients(params, block[:cfg.saliency_prompts]) for block in run.blocks)
        mask = {k: m.to(params[k].dtype) for k, m in union_of_intersections(per_concept, cfg.saliency_keep).items()}
    resuming = checkpointing is not None and checkpointing.resume and checkpointing.path is not None \
        and checkpointing.path.exists()
    if cfg.adversarial and not resuming:
        run.pretrain_discriminator()
    iterations = cfg.iterations * (len(spec.concepts) if cfg.iterations_per_concept else 1)
    trace = finetune(params, run.step, iterations, cfg.lr, label="score" if cfg.adversarial else "ant",
                     mask=mask, checkpointing=checkpointing, extra_modules={"D": run.D},
                     extra_optimizers={"D": run.opt_D}, show_progress=show_progress)
    if mask is not None:
        trace.info["saliency_kept"] = float(sum(m.sum() for m in mask.values()) / sum(m.numel() for m in mask.values()))
    return trace
