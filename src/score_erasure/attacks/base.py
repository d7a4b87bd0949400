"""What every attack shares: its config's base (`AttackConfig`, which declares the budget), its inputs
(`AttackContext`), its output for one prompt (`FoundPrompt`, saved under an attack folder's prompts/), target
images from the base model, and the choice of the best of several candidate token sequences on a fixed batch.
The denoising objective the optimising attacks descend lives in `prompting.optimise`.
"""

from __future__ import annotations

import hashlib
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from score_erasure.backends.tokens import TokenGenerator
from score_erasure.evaluation.protocol import Check, Sampling
from score_erasure.io import load_tensors
from score_erasure.prompting.tokens import TokenPrompt
from score_erasure.spec import ConceptSpec


class AttackConfig(BaseModel):
    """An attack's settings. `budget()` names the ones that set how hard it tries (iterations, tokens, images):
    the report's budget line, so that two ASRs are compared at the budgets they were measured at."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @abstractmethod
    def budget(self) -> dict:
        """The settings that bound the attack's search."""


@dataclass
class AttackContext:
    """Everything an attack may use. `denoiser` is the model under attack (a Denoiser, or a TokenGenerator for an
    autoregressive model: the batches of `prompting.optimise` carry which objective applies); `base` the model
    before erasure (it makes target images and P4D's reference predictions); `spec` holds matched prompt pairs with and
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
    memo: dict = field(default_factory=dict)  # what an attack computes once for all its prompts (a learned word)
    # the base's target draws (`concept_latents`), shared by every context on the same base, protocol and judge
    # (a bench's rows): each is drawn once, and a reuse leaves the generator where the draw left it
    base_draws: dict = field(default_factory=dict)

    def timesteps(self) -> torch.Tensor | None:
        """The attacks' noise levels: the sampler's timesteps at the protocol's step count (None for a token
        generator, whose objective has none)."""
        return None if isinstance(self.denoiser, TokenGenerator) else self.denoiser.timesteps(self.sampling.steps)


@dataclass
class FoundPrompt:
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


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Decoder output in [0, 1] (N, 3, H, W) -> uint8 (N, H, W, 3), as generation rounds it."""
    return np.clip(np.rint(images.permute(0, 2, 3, 1).float().numpy() * 255), 0, 255).astype(np.uint8)


@torch.no_grad()
def concept_latents(ctx: AttackContext, prompt: str, n: int, gen: torch.Generator) -> torch.Tensor:
    """n clean latents (a token generator's: image codes) of `prompt` from the base model, preferring those in
    which the judge sees the concept (the attack's target images x_tgt): 2n are drawn and the hits come first.
    A draw already in `ctx.base_draws` (same prompt, n and generator state) is reused."""
    key = (prompt, n, hashlib.sha256(gen.get_state().numpy().tobytes()).hexdigest())
    if key in ctx.base_draws:
        x0, after = ctx.base_draws[key]
        gen.set_state(after)
        return x0.clone()
    base, cond = ctx.base, ctx.base.encode([prompt])
    if isinstance(base, TokenGenerator):  # one generator per row, each seeded from `gen`
        seeds = torch.randint(2 ** 62, (2 * n,), generator=gen).tolist()
        x0 = base.sample_seeds(cond.expand(2 * n), seeds, guidance=ctx.sampling.guidance)
        images = base.decode(x0).permute(0, 3, 1, 2)
    else:
        x0 = base.sample(cond.expand(2 * n, -1, -1), ctx.sampling.steps, guidance=ctx.sampling.guidance,
                         generator=gen)
        images = base.decode(x0)
    hits = ctx.judge.check(to_uint8(images), ctx.detect)
    order = np.argsort(~hits, kind="stable")
    x0 = x0[torch.from_numpy(order[:n].copy())]
    ctx.base_draws[key] = (x0.clone(), gen.get_state())
    return x0


def best_tokens(candidates: Sequence[torch.Tensor], objective) -> tuple[torch.Tensor, float]:
    """The candidate token sequence with the lowest objective (a fixed batch, so values compare)."""
    with torch.no_grad():
        values = [float(objective(c)) for c in candidates]
    i = int(np.argmin(values))
    return candidates[i], values[i]


def load_found(path: Path) -> tuple[TokenPrompt, torch.Tensor | None, dict]:
    """A prompt's saved result: its tokens, its free vectors (or None) and its record."""
    tensors, meta = load_tensors(path)
    return TokenPrompt.from_tensors(tensors), tensors.get("vectors"), meta


def found_prompts(folder: Path) -> list[FoundPrompt]:
    """Every prompt result in an attack output folder (what `score certify --attacks` reads)."""
    return [FoundPrompt(tokens, meta["adversarial"], vectors)
            for tokens, vectors, meta in map(load_found, sorted((Path(folder) / "prompts").glob("*.safetensors")))]
