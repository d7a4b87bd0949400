"""DuMo (Han et al., AAAI 2025): the UNet stays frozen; a second encoder, trained to erase, feeds its skip connections.

The eraser (EPR) is a copy of the UNet's encoder half (input convolution, time embedding, down blocks, mid block),
initialised from the UNet (its prior knowledge), whose zero-initialised 1x1 convolutions add one residual to each
skip connection and to the mid block. It reads what the UNet reads (z_t, t, the text), and time-layer modulation
(TLMO) scales residual i at timestep t by s[bucket(t), i]:

    ε_DuMo(z_t, t, c) = UNet(z_t, t, c; skip_i + strength · s[b(t), i] · r_i(z_t, t, c))

At the start every r_i is zero, so the model is exactly the base. Training (the paper's loss is not public; this is
our reading) is ESD's negative guidance on the concept with a retain term, on the EPR and the scales only:

    L = ‖ε_DuMo(z_t, t, c) − [ε_0(∅) − η (ε_0(c) − ε_0(∅))]‖²
        + γ (‖ε_DuMo(z_r, t, c_r) − ε_0(z_r, t, c_r)‖² + ‖ε_DuMo(z_t, t, ∅) − ε_0(z_t, t, ∅)‖²)

z_t and z_r from the base model's trajectories of the target and retained prompts, cached before training.
Ours too: the EPR is diffusers' ControlNetModel built from the UNet, its image-condition branch fed zeros (DuMo has
no image condition: the branch is a learned constant); the scales are learned with the EPR (DuMo loads them with
its checkpoints, found by a search it does not publish), 20 buckets over the 1,000 training timesteps as in its
inference code. The EPR runs as a forward pre-hook on the UNet, saved in the delta (`hook.dumo.*`) and re-installed
on load; it adds weights rather than changing them, so `score merge` refuses it. UNet models (SD1.x, SD2.x) only.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from score_erasure import parallel
from score_erasure.delta import attach_hook
from score_erasure.methods.loop import Checkpointing, Trace, finetune
from score_erasure.methods.trce import in_turn, trajectory_points
from score_erasure.spec import ConceptSpec

BUCKETS = 20  # TLMO's timestep buckets of 50 training steps each


class DuMoConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    iterations: int = Field(200, ge=1)
    lr: float = Field(1e-4, gt=0)
    eta: float = 1.0
    retain_weight: float = Field(1.0, ge=0)  # γ
    retain_batch: int = Field(4, ge=1)
    strength: float = Field(1.0, ge=0)  # the inference multiplier of every residual
    trajectories: int = Field(16, ge=1)  # cached base trajectories of the target prompts, in turn (one each at least)
    retain_trajectories: int = Field(16, ge=1)
    steps: int = Field(25, ge=2)
    guidance: float = 3.0
    chunk: int = Field(16, ge=1)
    seed: int = 0


class Eraser(nn.Module):
    """The EPR and its TLMO scales, as a forward pre-hook that hands the UNet its residuals."""

    name = "dumo"

    def __init__(self, epr: nn.Module, strength: float, scales: torch.Tensor | None = None):
        super().__init__()
        self.epr, self.strength, self.active = epr, strength, True
        count = len(epr.controlnet_down_blocks) + 1  # every skip connection and the mid block
        self.scales = nn.Parameter(torch.ones(BUCKETS, count) if scales is None else scales.clone())

    def residuals(self, sample, timestep, text) -> tuple[list[torch.Tensor], torch.Tensor]:
        self.epr.to(sample.device, sample.dtype)  # the pipeline may have moved since the hook was made
        t = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(len(sample))
        down, mid = self.epr(sample, t, encoder_hidden_states=text, controlnet_cond=torch.zeros_like(sample),
                             return_dict=False)
        s = self.scales.to(sample)[(t.float() / 1000 * BUCKETS).long().clamp(0, BUCKETS - 1)] * self.strength
        shape = (len(sample), 1, 1, 1)
        return [r * s[:, i].view(shape) for i, r in enumerate(down)], mid * s[:, -1].view(shape)

    def __call__(self, module, args, kwargs):
        if not self.active:
            return None
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        text = args[2] if len(args) > 2 else kwargs["encoder_hidden_states"]
        down, mid = self.residuals(sample, timestep, text)
        return args, {**kwargs, "down_block_additional_residuals": down, "mid_block_additional_residual": mid}

    @contextlib.contextmanager
    def off(self):
        """The base model ε_0: the UNet without its eraser."""
        self.active = False
        try:
            yield
        finally:
            self.active = True

    def tensors(self) -> dict[str, torch.Tensor]:
        return {**{f"epr.{k}": v for k, v in self.epr.state_dict().items()}, "scales": self.scales.detach()}

    def config(self) -> dict:
        return {"epr": dict(self.epr.config), "strength": self.strength}


def install(denoiser, epr: nn.Module, strength: float, scales: torch.Tensor | None = None) -> Eraser:
    hook = Eraser(epr, strength, scales)
    attach_hook(denoiser.network, hook, before=True)
    return hook


def restore(denoiser, tensors: dict[str, torch.Tensor], settings: dict) -> None:
    """Re-install the eraser saved in a delta: the EPR rebuilt from its config, its weights and scales loaded."""
    from diffusers import ControlNetModel

    epr = ControlNetModel.from_config(settings["epr"])
    epr.load_state_dict({k[len("epr."):]: v for k, v in tensors.items() if k.startswith("epr.")})
    install(denoiser, epr.requires_grad_(False).eval(), settings["strength"], tensors["scales"])


def dumo(denoiser, spec: ConceptSpec, cfg: DuMoConfig, checkpointing: Checkpointing | None = None,
         show_progress: bool = True) -> Trace:
    from diffusers import ControlNetModel

    network = denoiser.network.requires_grad_(False)
    targets, retain = spec.target_prompts, spec.retain_prompts or spec.anchor_prompts
    pick = in_turn(len(targets), cfg.trajectories)
    pick_r = [j % len(retain) for j in range(cfg.retain_trajectories)]
    c, c_r, uncond = denoiser.encode(targets), denoiser.encode(retain), denoiser.unconditional(1)
    z, timesteps = trajectory_points(denoiser, c[pick], cfg, cfg.seed, cfg.steps, "dumo: trajectories", show_progress)
    z_r, _ = trajectory_points(denoiser, c_r[pick_r], cfg, cfg.seed + 1, cfg.steps, "dumo: retained", show_progress)
    with torch.random.fork_rng(devices=[]):  # the zero convolutions' init follows the method's seed
        torch.manual_seed(cfg.seed)
        epr = ControlNetModel.from_unet(network, conditioning_embedding_out_channels=(16,),
                                        conditioning_channels=network.config.in_channels)
    hook = install(denoiser, epr.to(denoiser.device, network.dtype), cfg.strength)
    params = {k: p.requires_grad_(True) for k, p in hook.named_parameters()}

    def step(k: int):
        rng = np.random.default_rng(parallel.step_key(cfg.seed, k))
        j, n = int(rng.integers(len(pick))), int(rng.integers(cfg.steps))
        i, z_t, t = pick[j], z[n, j:j + 1], timesteps[n]
        rows = rng.choice(cfg.retain_trajectories, size=min(cfg.retain_batch, cfg.retain_trajectories), replace=False)
        at = rng.integers(cfg.steps, size=len(rows))
        z_rt, t_r, cond_r = z_r[at, rows], timesteps[at], c_r[[pick_r[r] for r in rows]]
        with torch.no_grad(), hook.off():
            e_u, e_c = denoiser.predict(torch.cat([z_t, z_t]), t, torch.cat([uncond, c[i:i + 1]])).chunk(2)
            target, e_r = e_u - cfg.eta * (e_c - e_u), denoiser.predict(z_rt, t_r, cond_r)
        v_u, v_c = denoiser.predict(torch.cat([z_t, z_t]), t, torch.cat([uncond, c[i:i + 1]])).chunk(2)
        erase = F.mse_loss(v_c, target)
        # the unconditional prediction held too: guidance reads cond - uncond, and an eraser that moved both alike
        # would leave the concept's direction, and the concept, where it was
        keep = F.mse_loss(denoiser.predict(z_rt, t_r, cond_r), e_r) + F.mse_loss(v_u, e_u)
        return erase + cfg.retain_weight * keep, {"erase": erase.item(), "retain": keep.item()}

    trace = finetune(params, step, cfg.iterations, cfg.lr, label="dumo", checkpointing=checkpointing,
                     show_progress=show_progress)
    hook.requires_grad_(False)
    return trace
