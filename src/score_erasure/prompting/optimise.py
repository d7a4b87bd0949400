"""Optimising a prompt's free token vectors against a model's own denoising loss.

The denoising loss makes a diffusion model its own concept classifier: it is low when the model reads the
images as drawn from the prompt. Attacks (UnlearnDiffAtk, P4D, concept inversion) and score-robust's inner
attack all descend it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from score_erasure.prompting.tokens import PLACEHOLDER_TEXT, TokenPrompt, table, text_ids


def generator(seed: int, *key: int) -> torch.Generator:
    """A generator seeded from (seed, *key): independent streams per prompt index or step."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, *key]).generate_state(1)[0]))


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


def soft_prompt_steps(denoiser, prompt: TokenPrompt | Sequence[TokenPrompt], v: torch.Tensor, x_tgt: torch.Tensor,
                      timesteps: torch.Tensor, steps: int, lr: float, batch: int,
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
                              NoisyBatch.draw(x_tgt, timesteps, batch, gen))
        (v.grad,) = torch.autograd.grad(loss, [v])
        opt.step()
        trace.append(loss.item())
    return v.detach(), trace


def initial_vectors(denoiser, word: str, n_tokens: int) -> torch.Tensor:
    """n_tokens copies of the input embedding of `word`'s first token: where a soft prompt starts."""
    tokenizer = denoiser.tokenizer
    first = (text_ids(tokenizer, word) or text_ids(tokenizer, PLACEHOLDER_TEXT))[0]
    return table(denoiser).weight[first].detach().expand(n_tokens, -1).clone()
