"""What every attack shares: its inputs (`AttackContext`), its output (`Found`), target images from the base
model, the denoising loss that makes a diffusion model its own concept classifier, and the choice of the
best of several candidate token sequences on a fixed batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from score_erasure.attacks.tokens import TokenPrompt
from score_erasure.evaluation.protocol import Check, Sampling
from score_erasure.spec import ConceptSpec


@dataclass
class AttackContext:
    """Everything an attack may use. `denoiser` is the model under attack; `base` the model before erasure
    (it makes target images and P4D's reference predictions); `spec` holds matched prompt pairs with and
    without the concept (Ring-A-Bell's concept vector); `targets` are the protocol's target prompts, the ones
    the optimising attacks start from; `paraphrases` (held-out wording) and `compositional` (held-out names
    among other attributes) feed the paraphrase attack."""

    denoiser: object
    base: object
    judge: object
    detect: tuple[Check, ...]
    sampling: Sampling
    spec: ConceptSpec
    targets: list[str]
    paraphrases: list[str] = field(default_factory=list)
    compositional: list[str] = field(default_factory=list)

    def timesteps(self) -> torch.Tensor:
        """The attacks' noise levels: the sampler's timesteps at the protocol's step count."""
        return self.denoiser.timesteps(self.sampling.steps)


@dataclass
class Found:
    """An attack's result for one prompt: the tokens (and free vectors) the attacked model is prompted with."""

    prompt: TokenPrompt
    adversarial: str  # readable form; free vectors show as the placeholder word
    vectors: torch.Tensor | None = None  # (k, width) free embeddings at the slots (inversion)
    exact_text: bool = False  # `adversarial` alone, tokenised, reproduces the conditioning
    trace: list[float] = field(default_factory=list)  # the objective per iteration or generation

    def condition(self, denoiser) -> torch.Tensor:
        with torch.no_grad():
            return self.prompt.condition(denoiser, self.vectors)

    def tensors(self) -> dict[str, torch.Tensor]:
        extra = {"vectors": self.vectors.detach()} if self.vectors is not None else {}
        return {**self.prompt.tensors(), **extra}


def generator(seed: int, *key: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, *key]).generate_state(1)[0]))


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Decoder output in [0, 1] (N, 3, H, W) -> uint8 (N, H, W, 3), as generation rounds it."""
    return np.clip(np.rint(images.permute(0, 2, 3, 1).float().numpy() * 255), 0, 255).astype(np.uint8)


@torch.no_grad()
def concept_latents(ctx: AttackContext, prompt: str, n: int, gen: torch.Generator) -> torch.Tensor:
    """n clean latents of `prompt` from the base model, preferring those in which the judge sees the concept
    (the attack's target images x_tgt): 2n are drawn and the hits come first."""
    cond = ctx.base.encode([prompt]).expand(2 * n, -1, -1)
    x0 = ctx.base.sample(cond, ctx.sampling.steps, guidance=ctx.sampling.guidance, generator=gen)
    hits = ctx.judge.check(to_uint8(ctx.base.decode(x0)), ctx.detect)
    order = np.argsort(~hits, kind="stable")
    return x0[torch.from_numpy(order[:n].copy())]


@dataclass(frozen=True)
class NoisyBatch:
    """x0, noise and t for one evaluation of a denoising objective."""

    x0: torch.Tensor
    noise: torch.Tensor
    t: torch.Tensor

    @classmethod
    def draw(cls, x0: torch.Tensor, timesteps: torch.Tensor, size: int, gen: torch.Generator) -> NoisyBatch:
        pick = torch.randint(len(x0), (size,), generator=gen)
        t = timesteps[torch.randint(len(timesteps), (size,), generator=gen)]
        return cls(x0[pick], torch.randn((size, *x0.shape[1:]), generator=gen), t)

    def x_t(self, denoiser) -> torch.Tensor:
        return denoiser.add_noise(self.x0, self.noise, self.t)


def denoising_loss(denoiser, cond: torch.Tensor, batch: NoisyBatch) -> torch.Tensor:
    """‖f_θ(x_t, t, c) − target(x0, ε, t)‖²: low when the model reads the images as drawn from prompt c."""
    pred = denoiser.predict(batch.x_t(denoiser), batch.t, cond.expand(len(batch.t), -1, -1))
    return F.mse_loss(pred, denoiser.target(batch.x0, batch.noise, batch.t))


def best_tokens(candidates: Sequence[torch.Tensor], objective) -> tuple[torch.Tensor, float]:
    """The candidate token sequence with the lowest objective (a fixed batch, so values compare)."""
    with torch.no_grad():
        values = [float(objective(c)) for c in candidates]
    i = int(np.argmin(values))
    return candidates[i], values[i]
