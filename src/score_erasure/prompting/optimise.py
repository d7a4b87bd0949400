"""Optimising a prompt's free token vectors against a model's own denoising loss.

The denoising loss makes a diffusion model its own concept classifier: it is low when the model reads the
images as drawn from the prompt. A token generator's teacher-forced code cross-entropy plays the same part; the
batch (`NoisyBatch` or `CodeBatch`) carries which objective applies. Attacks (UnlearnDiffAtk, P4D, concept
inversion) and score-robust's inner attack all descend it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from score_erasure.backends.tokens import code_kl
from score_erasure.prompting.tokens import PLACEHOLDER_TEXT, TokenPrompt, table, text_ids


def generator(seed: int, *key: int) -> torch.Generator:
    """A generator seeded from (seed, *key): independent streams per prompt index or step."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, *key]).generate_state(1)[0]))


@dataclass(frozen=True)
class NoisyBatch:
    """x0, noise and t for one evaluation of a diffusion model's denoising objective."""

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

    def predict(self, denoiser, cond: torch.Tensor) -> torch.Tensor:
        """f_θ(x_t, t, c) for every row, under one conditioning c."""
        return denoiser.predict(self.x_t(denoiser), self.t, cond.expand(len(self.t), -1, -1))

    def loss(self, denoiser, cond: torch.Tensor) -> torch.Tensor:
        """‖f_θ(x_t, t, c) − target(x0, ε, t)‖²."""
        return F.mse_loss(self.predict(denoiser, cond), denoiser.target(self.x0, self.noise, self.t))

    @staticmethod
    def match(pred: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """How far one model's predictions are from another's on this batch (P4D): squared error."""
        return F.mse_loss(pred, reference)


@dataclass(frozen=True)
class CodeBatch:
    """Image codes for one evaluation of a token generator's objective: its teacher-forced cross-entropy, the
    autoregressive counterpart of the denoising loss (low when the model reads the codes as drawn from the
    prompt). No noise and no timesteps: every code position is a step."""

    codes: torch.Tensor  # (B, N) long

    @classmethod
    def draw(cls, codes: torch.Tensor, size: int, gen: torch.Generator) -> CodeBatch:
        return cls(codes[torch.randint(len(codes), (size,), generator=gen)])

    def predict(self, generator, cond) -> torch.Tensor:
        """The code logits (B, N, codebook) under one prefix."""
        return generator.image_logits(cond.expand(len(self.codes)), self.codes).float()

    def loss(self, generator, cond) -> torch.Tensor:
        """−(1/BN) Σ log p(r_i | r_<i, prefix)."""
        return F.cross_entropy(self.predict(generator, cond).flatten(0, 1), self.codes.flatten())

    @staticmethod
    def match(pred: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """KL(reference ‖ pred) per code position, averaged: the next-code distributions compared."""
        return code_kl(reference.log_softmax(-1), pred)


def draw_batch(targets: torch.Tensor, timesteps: torch.Tensor | None, size: int,
               gen: torch.Generator) -> NoisyBatch | CodeBatch:
    """A batch of the attacked model's objective on target samples: latents with noise levels (diffusion), or
    image codes (a token generator, which has no timesteps)."""
    return CodeBatch.draw(targets, size, gen) if timesteps is None else NoisyBatch.draw(targets, timesteps, size, gen)


def denoising_loss(model, cond, batch: NoisyBatch | CodeBatch) -> torch.Tensor:
    """The model's own fit of the batch under conditioning `cond`: low when it reads the images as drawn from the
    prompt (the denoising loss; a token generator's code cross-entropy)."""
    return batch.loss(model, cond)


def soft_prompt_steps(denoiser, prompt: TokenPrompt | Sequence[TokenPrompt], v: torch.Tensor, x_tgt: torch.Tensor,
                      timesteps: torch.Tensor | None, steps: int, lr: float, batch: int,
                      gen: torch.Generator) -> tuple[torch.Tensor, list[float]]:
    """`steps` Adam steps on the slot vectors v (k, width) lowering the denoising loss on x_tgt; gradients
    reach only v (never the network's parameters). Several prompts (templates holding the same slots) take
    the steps in turn, as textual inversion draws its templates."""
    prompts = [prompt] if isinstance(prompt, TokenPrompt) else list(prompt)
    v = v.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([v], lr=lr)
    trace = []
    for step in range(steps):
        loss = denoising_loss(denoiser, prompts[step % len(prompts)].condition(denoiser, v),
                              draw_batch(x_tgt, timesteps, batch, gen))
        (v.grad,) = torch.autograd.grad(loss, [v])
        opt.step()
        trace.append(loss.item())
    return v.detach(), trace


def initial_vectors(denoiser, word: str, n_tokens: int) -> torch.Tensor:
    """n_tokens copies of the input embedding of `word`'s first token: where a soft prompt starts."""
    tokenizer = denoiser.tokenizer
    first = (text_ids(tokenizer, word) or text_ids(tokenizer, PLACEHOLDER_TEXT))[0]
    return table(denoiser).weight[first].detach().expand(n_tokens, -1).clone()
