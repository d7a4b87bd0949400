"""MACE (Lu et al., CVPR 2024): mass concept erasure in three stages, all on the cross-attention K/V.

1. Closed-form refinement (CFR). For each target prompt and its anchor twin, the positions that both share (the
   common prefix, the common suffix, the trailing padding) are matched; the concept's own tokens are left out.
   Every W (K or V) is refined so that those context tokens stop carrying the concept:

       W_cfr = argmin λ||W' - W||² + Σ_m ||W' k_m - W v_m||² + s Σ_p ||W' p - W p||²

   with k_m the target's states at matched positions, v_m the anchor's at their twins and p every token of the
   retained prompts: UCE's closed form over other rows.
2. One rank-1 LoRA per concept on every K and V (from W_cfr), trained to remove the concept's attention where the
   concept is drawn: L = Σ_layers ||A_l[pixels in the mask, tokens in S]||_F, A_l = softmax(QKᵀ/√d), S the
   concept's tokens, the end token and the padding after it. Inputs: the base model's own samples of the
   concept, noised at t drawn from the bump p(t) ∝ σ(0.05(t - 200)) - σ(0.05(t - 400)). No denoising loss.
3. Closed-form fusion of the concepts' LoRAs, W_i = W_cfr + B_i A_i, with the preservation term:

       W* = argmin λ||W' - W_cfr||² + Σ_i Σ_{e in E_i} ||W' e - W_i e||² + s Σ_p ||W' p - W_0 p||²

   E_i every token of concept i's prompts; W_0 the original weight.

Our reading, where this toolkit differs from the reference: the reference runs Grounded-SAM on its generated
images of the concept. Here, on the embedded world's concepts (`masks = "auto"` or `"renderer"`), stage 2 trains
on the world renderer's scenes of the concept with their exact masks (the object, or the flames for fire), the
ground truth a segmenter approximates; on any other model (`"attention"`) on the base model's own samples, each
masked by its cross-attention (the concept tokens' map, averaged over layers and heads at a middle timestep,
kept above its mean). The reference's caches of COCO captions are the spec's retained prompts; its AdamW (weight decay
0.01) is Adam. UNet models only (SD1.x, SD2.x, SDXL): stage 2 reads cross-attention maps, which FLUX's joint
attention does not have in that form.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from score_erasure.errors import UserError
from score_erasure.methods.loop import Checkpointing, Trace, finetune, lora_trainable, merge_lora
from score_erasure.methods.uce import UCEConfig, uce_weight
from score_erasure.spec import ConceptSpec, mentions
from score_erasure.toyworld.specs import concept_renders


class MACEConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    lamb: float = Field(0.5, ge=0)  # λ of both closed forms (UCE's default on this toolkit's models)
    preserve_scale: float = Field(1.0, ge=0)  # s: weight of the retained prompts' tokens
    lora_steps: int = Field(50, ge=1)  # per concept (the reference's 50 for objects, celebrities, artists)
    lr: float = Field(1e-4, gt=0)
    rank: int = Field(1, ge=1)
    images: int = Field(8, ge=1)  # the base model's samples of each concept
    steps: int = Field(25, ge=1)  # their sampling steps
    guidance: float = 3.0
    masked: bool = True  # False: every pixel (the reference's choice for styles)
    # where stage 2's images and masks come from: "auto" is the renderer on the embedded world's concepts
    masks: Literal["auto", "renderer", "attention"] = "auto"
    importance_sampling: bool = True  # t from the bump on [200, 400], else uniform
    seed: int = 0
    group: Literal["xattn-kv"] = "xattn-kv"  # what MACE edits: the cross-attention K and V


# --- token matching and the two closed forms ----------------------------------------------------------
def matched_positions(ids: list[int], ids_anchor: list[int], length: int) -> tuple[list[tuple[int, int]], list[int]]:
    """(pairs of matched positions, the target's concept positions) for two prompts' real token ids (special
    tokens included): the common prefix, the common suffix and the padding up to `length`."""
    n, m = len(ids), len(ids_anchor)
    prefix = next((i for i in range(min(n, m)) if ids[i] != ids_anchor[i]), min(n, m))
    suffix = next((j for j in range(min(n, m) - prefix) if ids[n - 1 - j] != ids_anchor[m - 1 - j]), min(n, m) - prefix)
    pairs = [(i, i) for i in range(prefix)] + [(n - suffix + j, m - suffix + j) for j in range(suffix)]
    pairs += [(n + j, m + j) for j in range(length - max(n, m))]
    return pairs, list(range(prefix, n - suffix))


def fuse(W_cfr: torch.Tensor, concepts: list[tuple[torch.Tensor, torch.Tensor]], W_0: torch.Tensor,
         preserve: torch.Tensor, lamb: float, preserve_scale: float) -> torch.Tensor:
    """Stage 3 for one weight: `concepts` = [(W_i, E_i)], rows of E_i are embeddings; in float64."""
    W, W0, P = W_cfr.double(), W_0.double(), preserve.double()
    lhs = lamb * W + preserve_scale * (W0 @ P.T) @ P
    rhs = lamb * torch.eye(W.shape[1], dtype=torch.float64, device=W.device) + preserve_scale * P.T @ P
    for W_i, E in concepts:
        lhs = lhs + (W_i.double() @ E.double().T) @ E.double()
        rhs = rhs + E.double().T @ E.double()
    return torch.linalg.solve(rhs, lhs, left=False).to(W_cfr.dtype)


# --- cross-attention maps -----------------------------------------------------------------------------
class AttentionMaps:
    """Records softmax(QKᵀ/√d) of every cross-attention layer while installed (diffusers' plain AttnProcessor
    computes the probabilities explicitly; its `get_attention_scores` call is wrapped)."""

    def __init__(self, network):
        from diffusers.models.attention_processor import Attention

        self.layers = {n: m for n, m in network.named_modules() if n.endswith("attn2") and isinstance(m, Attention)}
        self.maps: list[torch.Tensor] = []

    def __enter__(self):
        from diffusers.models.attention_processor import AttnProcessor

        self.saved = {n: m.processor for n, m in self.layers.items()}
        for module in self.layers.values():
            module.set_processor(AttnProcessor())
            scores = type(module).get_attention_scores.__get__(module)
            module.get_attention_scores = lambda q, k, mask=None, scores=scores: self._keep(scores(q, k, mask))
        return self

    def _keep(self, probs: torch.Tensor) -> torch.Tensor:
        self.maps.append(probs)
        return probs

    def __exit__(self, *exc):
        for name, module in self.layers.items():
            del module.get_attention_scores
            module.set_processor(self.saved[name])

    def take(self) -> list[torch.Tensor]:
        maps, self.maps = self.maps, []
        return maps


def layer_mask(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """A (H, W) mask at a layer's resolution (`pixels` positions), flattened: nearest resize."""
    side = math.isqrt(pixels * mask.shape[1] // mask.shape[0])
    size = (pixels // side, side)
    return F.interpolate(mask[None, None].float(), size=size, mode="nearest").flatten() > 0.5


def attention_loss(maps: list[torch.Tensor], mask: torch.Tensor, tokens: list[int]) -> torch.Tensor:
    """Σ_l ||A_l[pixels in mask, tokens]||_F over the recorded layers (heads in the batch dimension)."""
    return sum(probs[:, layer_mask(mask, probs.shape[1])][:, :, tokens].pow(2).sum().sqrt() for probs in maps)


def concept_mask(maps: list[torch.Tensor], tokens: list[int], size: tuple[int, int]) -> torch.Tensor:
    """Where the model draws the concept: its tokens' attention, averaged over heads and layers at the latent's
    resolution, above its mean."""
    heat = torch.zeros(size)
    for probs in maps:
        side = math.isqrt(probs.shape[1] * size[1] // size[0])
        layer = probs[:, :, tokens].mean((0, 2)).reshape(1, 1, probs.shape[1] // side, side)
        heat += F.interpolate(layer.float().cpu(), size=size, mode="bilinear", align_corners=False)[0, 0]
    return heat > heat.mean()


_T = np.arange(1000)
_BUMP = 1 / (1 + np.exp(-0.05 * (_T - 200))) - 1 / (1 + np.exp(-0.05 * (_T - 400)))
_BUMP /= _BUMP.sum()


def _timestep(rng: np.random.Generator, importance: bool) -> int:
    """t from the bump on [200, 400] (importance sampling), else uniform over the 1,000 training steps."""
    return int(rng.choice(_T, p=_BUMP)) if importance else int(rng.integers(1000))


# --- the method ---------------------------------------------------------------------------------------
def token_ids(denoiser, prompts: list[str]) -> list[list[int]]:
    """Each prompt's real token ids (special tokens included), as the pipeline tokenises it."""
    tokens = denoiser.tokenizer(prompts, padding="max_length", truncation=True,
                                max_length=denoiser.tokenizer.model_max_length, return_tensors="pt")
    return [row[mask.bool()].tolist() for row, mask in zip(tokens["input_ids"], tokens["attention_mask"], strict=True)]


def mace(denoiser, spec: ConceptSpec, cfg: MACEConfig, checkpointing: Checkpointing | None = None,
         show_progress: bool = True) -> Trace:
    weights = {n: W for n, W in denoiser.parameters(cfg.group).items() if W.ndim == 2}
    original = {n: W.detach().clone() for n, W in weights.items()}
    with torch.no_grad():
        conds = dict(zip(spec.target_prompts + spec.anchor_prompts,
                         denoiser.encode(spec.target_prompts + spec.anchor_prompts), strict=True))
        states = {p: denoiser.token_states(c[None])[0] for p, c in conds.items()}
        preserve = (denoiser.token_states(denoiser.encode(spec.retain_prompts)).flatten(0, 1) if spec.retain_prompts
                    else next(iter(states.values()))[:0])
    length = next(iter(states.values())).shape[0]
    ids = dict(zip(spec.target_prompts + spec.anchor_prompts,
                   token_ids(denoiser, spec.target_prompts + spec.anchor_prompts), strict=True))

    rows, rows_anchor, concept_tokens = [], [], {}
    for target, anchor in zip(spec.target_prompts, spec.anchor_prompts, strict=True):
        pairs, own = matched_positions(ids[target], ids[anchor], length)
        rows += [states[target][i] for i, _ in pairs]
        rows_anchor += [states[anchor][j] for _, j in pairs]
        concept_tokens[target] = own + list(range(len(ids[target]) - 1, length))  # + the end token and padding
    prompts = [[p for p in spec.target_prompts if mentions(p, [c])] or spec.target_prompts for c in spec.concepts]
    renderer = cfg.masks == "renderer" or (cfg.masks == "auto" and spec.world)
    if renderer and not spec.world:
        raise UserError("mace: masks = 'renderer' needs the embedded world's concepts; use 'attention'")
    data = [_rendered_data(denoiser, c, cfg, k) if renderer else _concept_data(denoiser, ps, conds, concept_tokens,
                                                                                  cfg, k)
            for k, (c, ps) in enumerate(zip(spec.concepts, prompts, strict=True))]  # from the base, before any edit

    # stage 1: context tokens of each (target, anchor) pair onto the anchor's
    closed = UCEConfig(erase_scale=1.0, preserve_scale=cfg.preserve_scale, lamb=cfg.lamb)
    with torch.no_grad():
        for W in weights.values():
            W.copy_(uce_weight(W, torch.stack(rows), torch.stack(rows_anchor), preserve, closed))
    cfr = {n: W.detach().clone() for n, W in weights.items()}

    # stage 2: one LoRA per concept, from W_cfr
    trace, lora_weights, maps = Trace(), [], AttentionMaps(denoiser.network)
    for k, concept in enumerate(spec.concepts):
        params = lora_trainable(denoiser, cfg.group, cfg.rank, seed=cfg.seed + k)
        rng = np.random.default_rng([cfg.seed, 2, k])

        def step(_, k=k, rng=rng):
            x0, mask = data[k][int(rng.integers(len(data[k])))]
            p = prompts[k][int(rng.integers(len(prompts[k])))]
            t = torch.tensor([_timestep(rng, cfg.importance_sampling)], device=x0.device)
            noise = torch.from_numpy(rng.standard_normal(x0.shape).astype(np.float32)).to(x0)
            with maps:
                denoiser.predict(denoiser.add_noise(x0, noise, t), t, conds[p][None])
            return attention_loss(maps.take(), mask.to(x0.device), concept_tokens[p]), {"concept": float(k)}

        trace.rows += finetune(params, step, cfg.lora_steps, cfg.lr, label=f"mace ({concept})",
                               show_progress=show_progress).rows
        merge_lora(denoiser.network)
        weights = {n: W for n, W in denoiser.parameters(cfg.group).items() if W.ndim == 2}
        lora_weights.append({n: W.detach().clone() for n, W in weights.items()})
        with torch.no_grad():
            for n, W in weights.items():
                W.copy_(cfr[n])

    # stage 3: fuse the concepts' LoRAs with the preservation term
    embeddings = [torch.cat([states[p] for p in ps]) for ps in prompts]
    with torch.no_grad():
        for n, W in weights.items():
            W.copy_(fuse(cfr[n], [(lw[n], E) for lw, E in zip(lora_weights, embeddings, strict=True)], original[n],
                         preserve, cfg.lamb, cfg.preserve_scale))
    return trace


@torch.no_grad()
def _rendered_data(denoiser, concept: str, cfg: MACEConfig, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The world renderer's scenes of concept k as (1, C, H, W) latents, each with its exact mask (H, W) at the
    latents' resolution: a latent cell counts when a quarter of its pixels show the concept (thin flames would
    vanish at a half); every cell where `masked` is off."""
    images, masks = concept_renders(concept, cfg.images, seed=cfg.seed + k)
    x0 = denoiser.encode_images(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    size = tuple(x0.shape[-2:])
    small = F.adaptive_avg_pool2d(torch.from_numpy(masks).float()[:, None], size)[:, 0] >= 0.25
    return [(x0[i:i + 1], small[i] if cfg.masked else torch.ones(size, dtype=torch.bool)) for i in range(len(x0))]


@torch.no_grad()
def _concept_data(denoiser, prompts: list[str], conds: dict[str, torch.Tensor], concept_tokens: dict,
                  cfg: MACEConfig, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The base model's samples of concept k ((1, C, H, W) latents) with their masks (H, W)."""
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([cfg.seed, 1, k]).generate_state(1)[0]))
    data = []
    for i in range(cfg.images):
        prompt = prompts[i % len(prompts)]
        cond = conds[prompt][None]
        x0 = denoiser.sample(cond, cfg.steps, guidance=cfg.guidance, generator=generator)
        mask = torch.ones(x0.shape[-2:], dtype=torch.bool)
        if cfg.masked:
            t = denoiser.timesteps(cfg.steps)[cfg.steps // 2]
            with AttentionMaps(denoiser.network) as maps:
                denoiser.predict(denoiser.add_noise(x0, torch.randn(x0.shape, generator=generator).to(x0), t), t, cond)
            mask = concept_mask(maps.take(), concept_tokens[prompt], tuple(x0.shape[-2:]))
        data.append((x0, mask))
    return data
