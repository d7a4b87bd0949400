"""Training of the embedded models: render a pool of scenes, fit the VAE, then the UNet on its latents
(`arch="sd"`); or, for embedded-flux (`arch="flux"`), a FLUX transformer on the latents of the shipped VAE; or,
for the autoregressive model (`arch="ar"`), a VQ-VAE, then a Janus transformer on the codes of the pool.

Every stage checkpoints into the run directory and `resume=True` continues where it stopped. All
randomness of step k is drawn from generators seeded by (seed, stage, k), so a resumed run takes the
same steps a straight run would.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import FluxTransformer2DModel
from diffusers.optimization import get_cosine_schedule_with_warmup
from pydantic import BaseModel, ConfigDict, Field
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from score_erasure.backends.flux import FluxDenoiser
from score_erasure.backends.tokens import JanusGenerator, TokenConditioning
from score_erasure.backends.var import MultiScaleVQ, NextScaleTransformer, VARGenerator
from score_erasure.io import (
    atomic_write_json,
    load_metadata,
    load_tensors,
    optimizer_tensors,
    restore_optimizer,
    save_tensors,
)
from score_erasure.progress import progress_bar
from score_erasure.provenance import hash_directory, provenance
from score_erasure.toyworld import captions, model


class TrainConfig(BaseModel):
    """Defaults: 102 minutes on 2 free CPU cores for the SD model (measured in docs/embedded-model.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")  # a misspelt field is an error, not a silent default

    seed: int = 0
    pool_size: int = Field(40_000, ge=1)
    character_rate: float = Field(0.15, ge=0, le=1)
    fire_rate: float = Field(0.25, ge=0, le=1)
    vae_steps: int = Field(2_000, ge=0)
    vae_batch: int = Field(32, ge=1)
    vae_lr: float = Field(1e-3, gt=0)
    vae_kl_weight: float = Field(1e-6, ge=0)
    unet_steps: int = Field(12_000, ge=0)
    unet_batch: int = Field(32, ge=1)
    unet_lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(500, ge=0)
    caption_dropout: float = Field(0.1, ge=0, le=1)
    ema_decay: float = Field(0.999, ge=0, le=1)
    min_snr_gamma: float = Field(5.0, gt=0)
    flux_steps: int = Field(24_000, ge=0)
    flux_batch: int = Field(32, ge=1)
    flux_lr: float = Field(5e-4, gt=0)
    # the autoregressive model's stages, sized from a 30-step probe (docs/embedded-model.md), not yet trained in full
    vq_steps: int = Field(3_000, ge=0)
    vq_batch: int = Field(32, ge=1)
    vq_lr: float = Field(1e-3, gt=0)
    vq_restart_every: int = Field(100, ge=1)
    vq_restart_until: float = Field(0.6, ge=0, le=1)  # fraction of vq_steps
    vq_restart_probe: int = Field(512, ge=1)
    # then the decoder alone on the frozen codes (the codes, and so the transformer's training, stay the same)
    vq_decoder_steps: int = Field(2_000, ge=0)
    vq_decoder_lr: float = Field(5e-4, gt=0)
    ar_steps: int = Field(3_000, ge=0)
    ar_batch: int = Field(64, ge=1)
    ar_lr: float = Field(1e-3, gt=0)
    # embedded-var (arch "var"): its multi-scale tokenizer starts from embedded-ar's VQ-VAE, then its transformer
    var_vq_steps: int = Field(1_500, ge=0)
    var_vq_lr: float = Field(3e-4, gt=0)
    var_steps: int = Field(4_000, ge=0)  # 3,000 (with a 0.15 character share) missed the character bar
    var_batch: int = Field(64, ge=1)
    var_lr: float = Field(1e-3, gt=0)
    # True: the EMA's decay ramps as (1+n)/(10+n) up to ema_decay (diffusers' EMAModel default) instead of starting
    # at it (a flat 0.999 over 3,000 steps keeps 5% of the random start). Tried once (docs/embedded-model.md): it
    # did not help, so the shipped model's flat decay stays the default.
    var_ema_warmup: bool = False
    # the share of character scenes in embedded-var's pool (its own, so the other models' records stay true);
    # 0.15 left the model mixing up two characters' names (docs/embedded-model.md)
    var_character_rate: float = Field(0.25, ge=0, le=1)
    checkpoint_every: int = Field(500, ge=1)
    # Build each step's batch (captions, their encoding, latents, noise, t) in this many loader processes while
    # the network trains: caption encoding is ~40% of a step, and overlapping it uses the second core. The
    # batches are the same with 0 (in-process) as with 1 (tested).
    loader_workers: int = 1


def _step_rng(seed: int, stage: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, stage, step]).generate_state(1)[0]))
    return np.random.default_rng([seed, stage, step]), gen


def _ema_warmup_fn(decay: float) -> Callable:
    """An EMA whose decay after n updates is min(decay, (1+n)/(10+n)): early weights are forgotten fast."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        rate = 1 - min(decay, (1 + int(n)) / (10 + int(n)))
        floats = [(a, c) for a, c in zip(averaged, current, strict=True) if torch.is_floating_point(a)]
        if floats:
            torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], rate)

    return update


class _Trainer:
    """A resumable optimisation loop over one module: checkpoint layout and bookkeeping in one place."""

    def __init__(self, name: str, module: torch.nn.Module, lr: float, steps: int, warmup: int,
                 run_dir: Path, every: int, ema_decay: float | None = None, resume: bool = False,
                 ema_warmup: bool = False):
        self.name, self.module, self.steps, self.warmup, self.every = name, module, steps, warmup, every
        self.path = run_dir / f"{name}-checkpoint.safetensors"
        self.opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=0.0, fused=True)
        self.sched = get_cosine_schedule_with_warmup(self.opt, warmup, steps)
        self.ema = None
        if ema_decay:
            average = _ema_warmup_fn(ema_decay) if ema_warmup else get_ema_multi_avg_fn(ema_decay)
            self.ema = AveragedModel(module, multi_avg_fn=average, use_buffers=True)
        self.start = 0
        self.log = (run_dir / f"{name}-log.jsonl").open("a")
        if resume:
            self.resume()

    def resume(self) -> None:
        if not self.path.exists():
            return
        tensors, meta = load_tensors(self.path)
        self.module.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        if self.ema is not None:
            self.ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        restore_optimizer(self.opt, tensors)
        self.start = int(meta["step"])
        # The schedule is a pure function of the step: rebuild it at the resumed step.
        self.sched = get_cosine_schedule_with_warmup(self.opt, self.warmup, self.steps, last_epoch=self.start - 1)

    def checkpoint(self, step: int) -> None:
        tensors = optimizer_tensors(self.opt) | {f"model.{k}": v for k, v in self.module.state_dict().items()}
        if self.ema is not None:
            tensors |= {f"ema.{k}": v for k, v in self.ema.state_dict().items()}
        seen = set()  # tied weights (Janus's output head is its input embedding) share storage: safetensors
        for k, v in tensors.items():  # stores each tensor once, so a second name gets a copy
            tensors[k] = v.clone() if v.data_ptr() in seen else v
            seen.add(v.data_ptr())
        save_tensors(tensors, self.path, {"step": step})

    def run(self, loss_fn: Callable[..., torch.Tensor], budget: list[int] | None = None,
            batches: StepBatches | None = None, workers: int = 0) -> bool:
        """Optimise to the last step; with a step `budget` ([remaining], shared across stages) stop early
        at a checkpoint. `loss_fn(step)`, or `loss_fn(step, batch)` with step batches built by `batches` (in
        `workers` loader processes). Returns whether the stage is complete."""
        self.module.train()
        steps = range(self.start, self.steps)
        feed = iter(_loader(batches, steps, workers)) if batches is not None else None
        with progress_bar() as bar:
            task = bar.add_task(f"train {self.name}", total=self.steps, completed=self.start, info="")
            running = None
            for step in steps:
                if budget is not None and budget[0] <= 0:
                    self.checkpoint(step)
                    return False
                loss = loss_fn(step) if feed is None else loss_fn(step, next(feed))
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.module.parameters(), 1.0)
                self.opt.step()
                self.sched.step()
                if self.ema is not None:
                    self.ema.update_parameters(self.module)
                if budget is not None:
                    budget[0] -= 1
                running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
                bar.update(task, advance=1, info=f"loss {running:.4f}")
                if (step + 1) % 50 == 0:
                    self.log.write(json.dumps({"step": step + 1, "loss": running, "time": time.time()}) + "\n")
                    self.log.flush()
                if (step + 1) % self.every == 0 or step + 1 == self.steps:
                    self.checkpoint(step + 1)
        return True

    def trained(self) -> torch.nn.Module:
        module = self.ema.module if self.ema is not None else self.module
        return module.eval()


def _to_unit(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def train_vae(cfg: TrainConfig, images: torch.Tensor, run_dir: Path, resume: bool,
              budget: list[int] | None = None) -> bool:
    vae = model.new_vae()
    trainer = _Trainer("vae", vae, cfg.vae_lr, cfg.vae_steps, 100, run_dir, cfg.checkpoint_every, resume=resume)

    def loss_fn(step: int) -> torch.Tensor:
        rng, gen = _step_rng(cfg.seed, 1, step)
        x = images[torch.from_numpy(rng.integers(len(images), size=cfg.vae_batch))]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(gen)).sample
        return F.mse_loss(recon, x) + cfg.vae_kl_weight * posterior.kl().mean()

    if not trainer.run(loss_fn, budget):
        return False
    vae = trainer.trained()
    with torch.no_grad():
        sample = images[:4096]
        means = torch.cat([vae.encode(sample[i:i + 512]).latent_dist.mean for i in range(0, len(sample), 512)])
    vae.register_to_config(scaling_factor=float(1.0 / means.std()))
    vae.save_pretrained(run_dir / "vae")
    return True


@torch.no_grad()
def encode_pool(vae, images: np.ndarray, batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled latent means and standard deviations of every pool image (uint8 HWC)."""
    means, stds = [], []
    for i in range(0, len(images), batch):
        dist = vae.encode(_to_unit(images[i:i + batch])).latent_dist
        means.append(dist.mean * vae.config.scaling_factor)
        stds.append(dist.std * vae.config.scaling_factor)
    return torch.cat(means), torch.cat(stds)


class _TextCache:
    """Caption -> conditioning, through the pipeline's own encoding so training sees what sampling sees."""

    def __init__(self, encode: Callable[[list[str]], torch.Tensor]):
        self.encode, self.cache = encode, {}

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> torch.Tensor:
        missing = sorted({p for p in prompts if p not in self.cache})
        if missing:
            self.cache.update(zip(missing, self.encode(missing), strict=True))
        return torch.stack([self.cache[p] for p in prompts])


def _pool_latents(vae, images: np.ndarray, run_dir: Path) -> dict[str, torch.Tensor]:
    """The pool's latent distributions, encoded once per run."""
    path = run_dir / "latents.safetensors"
    if not path.exists():
        means, stds = encode_pool(vae, images)
        save_tensors({"mean": means, "std": stds}, path, {})
    return load_tensors(path)[0]


class StepBatches(torch.utils.data.Dataset):
    """Step k's batch as a pure function of (seed, stage, k): clean latents drawn from their posteriors, their
    captions (some dropped for guidance) encoded by `encode`, the noise and the timesteps `draw_t(gen, n)`; the
    same tensors whether built here or in a loader process."""

    def __init__(self, cfg: TrainConfig, stage: int, batch: int, pool, scenes, characters,
                 encode: Callable[[list[str]], torch.Tensor], draw_t: Callable[[torch.Generator, int], torch.Tensor]):
        self.cfg, self.stage, self.batch, self.pool = cfg, stage, batch, pool
        self.scenes, self.characters, self.draw_t = scenes, characters, draw_t
        self.text = _TextCache(encode)

    def __len__(self) -> int:
        return 1 << 30

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        rng, gen = _step_rng(self.cfg.seed, self.stage, step)
        idx = rng.integers(len(self.scenes), size=self.batch)
        prompts = ["" if rng.random() < self.cfg.caption_dropout
                   else captions.training_caption(rng, self.scenes[i], self.characters[i]) for i in idx]
        index = torch.from_numpy(idx)
        x0 = self.pool["mean"][index] + self.pool["std"][index] * torch.randn(self.pool["mean"][index].shape,
                                                                              generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        return {"x0": x0, "noise": noise, "t": self.draw_t(gen, len(x0)), "cond": self.text(prompts)}


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)  # the loader has one core's worth of work; the network keeps the rest


def _loader(batches: StepBatches, steps: range, workers: int):
    return torch.utils.data.DataLoader(batches, batch_size=None, sampler=steps, num_workers=workers,
                                       prefetch_factor=4 if workers else None, worker_init_fn=_one_thread)


def train_unet(cfg: TrainConfig, images: np.ndarray, scenes, characters, run_dir: Path, resume: bool,
               budget: list[int] | None = None) -> bool:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(run_dir / "vae")
    pool = _pool_latents(vae, images, run_dir)
    unet = model.new_unet()
    pipe = model.assemble(vae, unet)
    noise_scheduler = model.training_scheduler()
    alphas = noise_scheduler.alphas_cumprod
    batches = StepBatches(cfg, 2, cfg.unet_batch, pool, scenes, characters,
                          lambda prompts: pipe.encode_prompt(prompts, "cpu", 1, False)[0],
                          lambda gen, n: torch.randint(0, noise_scheduler.config.num_train_timesteps, (n,),
                                                       generator=gen))
    trainer = _Trainer("unet", unet, cfg.unet_lr, cfg.unet_steps, cfg.warmup_steps, run_dir,
                       cfg.checkpoint_every, ema_decay=cfg.ema_decay, resume=resume)

    def loss_fn(step: int, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x0, noise, t = batch["x0"], batch["noise"], batch["t"]
        x_t = noise_scheduler.add_noise(x0, noise, t)
        target = noise_scheduler.get_velocity(x0, noise, t)
        pred = unet(x_t, t, batch["cond"]).sample
        # Min-SNR weighting for v-prediction: min(SNR, gamma) / (SNR + 1).
        snr = alphas[t] / (1 - alphas[t])
        weight = torch.clamp(snr, max=cfg.min_snr_gamma) / (snr + 1)
        return (weight * (pred - target).pow(2).mean(dim=(1, 2, 3))).mean()

    if not trainer.run(loss_fn, budget, batches, cfg.loader_workers):
        return False
    trainer.trained().save_pretrained(run_dir / "unet")
    return True


def train_flux(cfg: TrainConfig, images: np.ndarray, scenes, characters, run_dir: Path, resume: bool,
               budget: list[int] | None = None) -> bool:
    """Rectified flow through the FLUX backend itself (packing, conditioning, x_t and target as sampling
    sees them): sigma = shift(sigmoid(n)), n ~ N(0, 1) (SD3's logit-normal), shifted by the mu that the
    sampler uses for this image size; loss ||v_theta(x_t, sigma, c) - (eps - x0)||^2."""
    from diffusers import AutoencoderKL
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    vae = AutoencoderKL.from_pretrained(model.WEIGHTS_DIR / "vae", dtype=torch.float32)
    pool = _pool_latents(vae, images, run_dir)
    transformer = model.new_flux_transformer()
    denoiser = FluxDenoiser(model.assemble_flux(vae, transformer))
    sched = model.FLUX_SCHEDULER_CONFIG
    tokens = (pool["mean"].shape[-1] // 2) ** 2
    shift = float(np.exp(calculate_shift(tokens, sched["base_image_seq_len"], sched["max_image_seq_len"],
                                         sched["base_shift"], sched["max_shift"])))

    def draw_t(gen: torch.Generator, n: int) -> torch.Tensor:
        u = torch.sigmoid(torch.randn(n, generator=gen))
        return 1000 * shift * u / (1 + (shift - 1) * u)

    batches = StepBatches(cfg, 3, cfg.flux_batch, pool, scenes, characters, denoiser.encode, draw_t)
    trainer = _Trainer("flux", transformer, cfg.flux_lr, cfg.flux_steps, cfg.warmup_steps, run_dir,
                       cfg.checkpoint_every, ema_decay=cfg.ema_decay, resume=resume)

    def loss_fn(step: int, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x0, noise, t = batch["x0"], batch["noise"], batch["t"]
        x_t = denoiser.add_noise(x0, noise, t)
        return F.mse_loss(denoiser.predict(x_t, t, batch["cond"]), denoiser.target(x0, noise, t))

    if not trainer.run(loss_fn, budget, batches, cfg.loader_workers):
        return False
    trainer.trained().save_pretrained(run_dir / "flux")
    return True


def train_vq(cfg: TrainConfig, images: torch.Tensor, run_dir: Path, resume: bool,
             budget: list[int] | None = None) -> bool:
    """The autoregressive model's tokenizer (Janus's VQ-VAE): ‖D(q(E(x))) − x‖² + its codebook and commitment
    terms, through the straight-through quantiser (transformers' own forward decodes from the code indices,
    which passes no gradient to the encoder).

    Every `vq_restart_every` steps of the first `vq_restart_until` of training, the codes that no image of a
    probe of `vq_restart_probe` pool images uses are moved onto encoder outputs of that probe (dead-code
    restarts; a function of the step alone, so resuming changes nothing). Judged on one training batch instead,
    rare but needed codes (a colour's edge patches) were reset every step, and the judge read over a third of the
    reconstructions' colours wrong (docs/embedded-model.md)."""
    vq = model.new_janus().model.vqmodel
    trainer = _Trainer("vq", vq, cfg.vq_lr, cfg.vq_steps, 100, run_dir, cfg.checkpoint_every, resume=resume)

    def encode(x: torch.Tensor) -> torch.Tensor:
        return vq.quant_conv(vq.encoder(x))

    @torch.no_grad()
    def restart(step: int) -> None:
        rng, gen = _step_rng(cfg.seed, 6, step)
        z = encode(images[torch.from_numpy(rng.integers(len(images), size=cfg.vq_restart_probe))])
        outputs = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        dead = torch.ones(vq.config.num_embeddings, dtype=torch.bool)
        dead[vq.quantize(z)[2]] = False
        if dead.any():
            vq.quantize.embedding.weight[dead] = outputs[torch.randint(len(outputs), (int(dead.sum()),),
                                                                       generator=gen)]

    def loss_fn(step: int) -> torch.Tensor:
        if step % cfg.vq_restart_every == 0 and step < cfg.vq_restart_until * cfg.vq_steps:
            restart(step)
        rng, _ = _step_rng(cfg.seed, 4, step)
        x = images[torch.from_numpy(rng.integers(len(images), size=cfg.vq_batch))]
        quantized, codebook_loss, _ = vq.quantize(encode(x))
        return F.mse_loss(vq.decoder(vq.post_quant_conv(quantized)), x) + codebook_loss

    if not trainer.run(loss_fn, budget):
        return False
    trainer.trained().save_pretrained(run_dir / "vq")
    return True


def train_vq_decoder(cfg: TrainConfig, images: torch.Tensor, run_dir: Path, resume: bool,
                     budget: list[int] | None = None) -> bool:
    """The VQ-VAE's decoder (and post-quantisation convolution) trained further on the frozen encoder's codes,
    into vq-decoder/: reconstruction alone, no codebook moves, so every image keeps its codes and the transformer
    trained on them is unchanged. Added against blotched fills that were later traced to a decoding of unit-length
    code vectors this VQ-VAE was not trained on (docs/embedded-model.md); kept, since the shipped model has it."""
    from transformers.models.janus.modeling_janus import JanusVQVAE

    vq = JanusVQVAE.from_pretrained(run_dir / "vq")
    vq.requires_grad_(False)
    decoder = torch.nn.ModuleDict({"post_quant_conv": vq.post_quant_conv, "decoder": vq.decoder})
    decoder.requires_grad_(True)
    trainer = _Trainer("vq-decoder", decoder, cfg.vq_decoder_lr, cfg.vq_decoder_steps, 100, run_dir,
                       cfg.checkpoint_every, resume=resume)

    def loss_fn(step: int) -> torch.Tensor:
        rng, _ = _step_rng(cfg.seed, 7, step)
        x = images[torch.from_numpy(rng.integers(len(images), size=cfg.vq_batch))]
        with torch.no_grad():
            quantized = vq.quantize(vq.quant_conv(vq.encoder(x)))[0]
        return F.mse_loss(vq.decoder(vq.post_quant_conv(quantized)), x)

    if not trainer.run(loss_fn, budget):
        return False
    trainer.trained()
    vq.save_pretrained(run_dir / "vq-decoder")
    return True


def assemble_ar_run(run_dir: Path) -> None:
    """ar/ = the trained transformer with the VQ-VAE of vq-decoder/ (the same codes, the refined decoder)."""
    from transformers import JanusForConditionalGeneration
    from transformers.models.janus.modeling_janus import JanusVQVAE

    janus = JanusForConditionalGeneration.from_pretrained(run_dir / "ar" / "model")
    janus.model.vqmodel.load_state_dict(JanusVQVAE.from_pretrained(run_dir / "vq-decoder").state_dict())
    model.assemble_ar(janus).save_pretrained(run_dir / "ar")


def _pool_codes(generator, images: np.ndarray, path: Path, tokenizer_dir: Path) -> torch.Tensor:
    """The codes of every pool image under a generator's tokenizer (saved in `tokenizer_dir`), computed once per
    tokenizer: a run retrained without --resume gets its new tokenizer's codes, not the cached ones."""
    key = hash_directory(tokenizer_dir)
    if not path.exists() or load_metadata(path).get("tokenizer") != key:
        with torch.no_grad():
            codes = torch.cat([generator.image_codes(torch.from_numpy(images[i:i + 512]).float() / 255)
                               for i in range(0, len(images), 512)])
        save_tensors({"codes": codes}, path, {"tokenizer": key})
    return load_tensors(path)[0]["codes"]


def _fit_generator(trainer: _Trainer, generator, codes: torch.Tensor, cfg: TrainConfig, stage: int, batch: int,
                   scenes, characters, budget: list[int] | None) -> bool:
    """−Σ_i log p(r_i | r_<i, caption) over the pool's codes, teacher-forced through the token backend itself
    (prompt format, padding, code inputs as sampling sees them); a dropped caption becomes the backend's own
    unconditional prefix, so guidance samples what training saw."""
    embed = generator.network.get_input_embeddings()

    def loss_fn(step: int) -> torch.Tensor:
        rng, _ = _step_rng(cfg.seed, stage, step)
        idx = rng.integers(len(scenes), size=batch)
        prefix = generator.encode([captions.training_caption(rng, scenes[i], characters[i]) for i in idx])
        dropped = torch.from_numpy(rng.random(len(idx)) < cfg.caption_dropout)[:, None]
        ids = torch.where(dropped, generator.unconditional(prefix).input_ids, prefix.input_ids)
        target = codes[torch.from_numpy(idx)]
        logits = generator.image_logits(TokenConditioning(embed(ids), prefix.mask, ids), target)
        return F.cross_entropy(logits.flatten(0, 1), target.flatten())

    return trainer.run(loss_fn, budget)


def train_ar(cfg: TrainConfig, images: np.ndarray, scenes, characters, run_dir: Path, resume: bool,
             budget: list[int] | None = None) -> bool:
    """The autoregressive transformer on the pool's codes (`_fit_generator`)."""
    from transformers.models.janus.modeling_janus import JanusVQVAE

    janus = model.new_janus()
    janus.model.vqmodel.load_state_dict(JanusVQVAE.from_pretrained(run_dir / "vq").state_dict())
    janus.model.vqmodel.requires_grad_(False)
    generator = JanusGenerator(model.assemble_ar(janus))
    codes = _pool_codes(generator, images, run_dir / "codes.safetensors", run_dir / "vq")
    trainer = _Trainer("ar", janus, cfg.ar_lr, cfg.ar_steps, cfg.warmup_steps, run_dir, cfg.checkpoint_every,
                       ema_decay=cfg.ema_decay, resume=resume)
    if not _fit_generator(trainer, generator, codes, cfg, 5, cfg.ar_batch, scenes, characters, budget):
        return False
    model.assemble_ar(trainer.trained()).save_pretrained(run_dir / "ar")
    return True


def train_var_vq(cfg: TrainConfig, images: torch.Tensor, run_dir: Path, resume: bool,
                 budget: list[int] | None = None) -> bool:
    """embedded-var's tokenizer, from embedded-ar's VQ-VAE (its encoder, codebook and decoder; each φ_k starts at
    zero, a plain upsampling): VAR's loss, the reconstruction through the straight-through partial sum plus,
    averaged over the scales (β = 0.25), ‖f_hat_k − sg(f)‖² + β‖sg(f_hat_k) − f‖²."""
    vq = model.new_var_vq()
    vq.vq.load_state_dict(model.load_embedded_ar().model.model.vqmodel.state_dict())
    trainer = _Trainer("var-vq", vq, cfg.var_vq_lr, cfg.var_vq_steps, 100, run_dir, cfg.checkpoint_every,
                       resume=resume)
    beta = 0.25  # VAR's

    def loss_fn(step: int) -> torch.Tensor:
        rng, _ = _step_rng(cfg.seed, 8, step)
        x = images[torch.from_numpy(rng.integers(len(images), size=cfg.vq_batch))]
        f = vq.features(x)
        partial = vq.quantize(f.detach())[1]
        fit = sum(F.mse_loss(f_hat, f.detach()) + beta * F.mse_loss(f_hat.detach(), f) for f_hat in partial)
        return F.mse_loss(vq.decode_latents(f + (partial[-1] - f).detach()), x) + fit / len(partial)

    if not trainer.run(loss_fn, budget):
        return False
    trainer.trained().save_pretrained(run_dir / "var" / "vq")
    return True


def train_var(cfg: TrainConfig, images: np.ndarray, scenes, characters, run_dir: Path, resume: bool,
              budget: list[int] | None = None) -> bool:
    """embedded-var's block-causal transformer on the pool's multi-scale codes (`_fit_generator`)."""
    vq = MultiScaleVQ.from_pretrained(run_dir / "var" / "vq").requires_grad_(False).eval()
    transformer = model.new_var_transformer()
    generator = VARGenerator(model.assemble_var(transformer, vq))
    codes = _pool_codes(generator, images, run_dir / "var-codes.safetensors", run_dir / "var" / "vq")
    trainer = _Trainer("var", transformer, cfg.var_lr, cfg.var_steps, cfg.warmup_steps, run_dir,
                       cfg.checkpoint_every, ema_decay=cfg.ema_decay, resume=resume, ema_warmup=cfg.var_ema_warmup)
    if not _fit_generator(trainer, generator, codes, cfg, 9, cfg.var_batch, scenes, characters, budget):
        return False
    trainer.trained().save_pretrained(run_dir / "var" / "transformer")
    return True


def train(run_dir: Path, cfg: TrainConfig, resume: bool = False, max_steps: int | None = None,
          arch: str = "sd") -> dict:
    """Train an embedded model into `run_dir`; returns the record. `arch="sd"`: the VAE and the UNet (vae/ and
    unet/ diffusers folders); `arch="flux"`: the FLUX transformer (flux/) on the shipped VAE's latents;
    `arch="ar"`: the VQ-VAE (vq/), the autoregressive model on its codes, then the VQ-VAE's decoder alone
    (vq-decoder/; the codes unchanged), assembled into ar/ (a JanusImagePipeline folder); `arch="var"`: the
    multi-scale tokenizer from the installed embedded-ar's VQ-VAE (var/vq), then the next-scale transformer on its
    codes (var/transformer).

    `max_steps` caps the optimisation steps of this call (over both stages), leaving a checkpoint that
    `resume=True` continues from: long training split over several sessions."""
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    record_path = run_dir / "train.json"
    record = json.loads(record_path.read_text()) if resume and record_path.exists() else {"seconds": {}}
    record.update(provenance(config=cfg.model_dump()))
    budget = None if max_steps is None else [max_steps]

    def timed(stage: str, fn: Callable[[], bool]) -> bool:
        start = time.time()
        done = fn()
        record["seconds"][stage] = record["seconds"].get(stage, 0.0) + time.time() - start
        record["complete"] = done and stage in ("unet", "flux", "vq-decoder", "var")
        atomic_write_json(record_path, record)
        return done

    start = time.time()
    rate = cfg.var_character_rate if arch == "var" else cfg.character_rate
    images, scenes, characters = captions.make_dataset(cfg.pool_size, cfg.seed, rate, cfg.fire_rate)
    record["seconds"]["render"] = record["seconds"].get("render", 0.0) + time.time() - start
    if arch == "flux":
        if not (resume and (run_dir / "flux" / "config.json").exists()):
            if not timed("flux", lambda: train_flux(cfg, images, scenes, characters, run_dir, resume, budget)):
                return record
        record["parameters"] = {"flux": model.count_parameters(model.new_flux_transformer())}
    elif arch == "ar":
        if not (resume and (run_dir / "vq" / "config.json").exists()):
            if not timed("vq", lambda: train_vq(cfg, _to_unit(images), run_dir, resume, budget)):
                return record
        if not (resume and (run_dir / "ar" / "model_index.json").exists()):
            if not timed("ar", lambda: train_ar(cfg, images, scenes, characters, run_dir, resume, budget)):
                return record
        if not (resume and (run_dir / "vq-decoder" / "config.json").exists()):
            if not timed("vq-decoder", lambda: train_vq_decoder(cfg, _to_unit(images), run_dir, resume, budget)):
                return record
        assemble_ar_run(run_dir)
        janus = model.new_janus()
        record["parameters"] = {"vq": model.count_parameters(janus.model.vqmodel),
                                "ar": model.count_parameters(janus.model.language_model)}
    elif arch == "var":
        if not (resume and (run_dir / "var" / "vq" / "config.json").exists()):
            if not timed("var-vq", lambda: train_var_vq(cfg, _to_unit(images), run_dir, resume, budget)):
                return record
        if not (resume and (run_dir / "var" / "transformer" / "config.json").exists()):
            if not timed("var", lambda: train_var(cfg, images, scenes, characters, run_dir, resume, budget)):
                return record
        record["parameters"] = {"vq": model.count_parameters(model.new_var_vq()),
                                "var": model.count_parameters(model.new_var_transformer())}
    else:
        if not (resume and (run_dir / "vae" / "config.json").exists()):
            if not timed("vae", lambda: train_vae(cfg, _to_unit(images), run_dir, resume, budget)):
                return record
        if not (resume and (run_dir / "unet" / "config.json").exists()):
            if not timed("unet", lambda: train_unet(cfg, images, scenes, characters, run_dir, resume, budget)):
                return record
        record["parameters"] = {"vae": model.count_parameters(model.new_vae()),
                                "unet": model.count_parameters(model.new_unet())}
    record["complete"] = True
    atomic_write_json(record_path, record)
    return record


def install_weights(run_dir: Path, weights_dir: Path = model.WEIGHTS_DIR, arch: str = "sd") -> None:
    """Copy a finished run's networks into the package, in half precision (safetensors): the VAE and UNet, for
    `arch="flux"` the transformer, for `arch="ar"` the Janus model (its VQ-VAE inside; the tokenizer is MiniLM's),
    for `arch="var"` the multi-scale tokenizer and the next-scale transformer."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import JanusForConditionalGeneration

    parts = {"flux": (("flux", FluxTransformer2DModel, "flux"),),
             "ar": (("ar", JanusForConditionalGeneration, "ar/model"),),
             "var": (("var/vq", MultiScaleVQ, "var/vq"),
                     ("var/transformer", NextScaleTransformer, "var/transformer"))}.get(
        arch, (("vae", AutoencoderKL, "vae"), ("unet", UNet2DConditionModel, "unet")))
    for name, cls, source in parts:
        module = cls.from_pretrained(run_dir / source).to(torch.float16)
        module.save_pretrained(weights_dir / name, safe_serialization=True)
    record = json.loads((run_dir / "train.json").read_text())
    atomic_write_json(weights_dir / {"flux": "flux-train.json", "ar": "ar-train.json", "var": "var-train.json"}.get(
        arch, "train.json"),
                      record)
