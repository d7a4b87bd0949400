"""Concept inversion (Pham et al., ICLR 2024, arXiv 2308.01508): textual inversion against the erased model.

A new word S* with free embedding v* (not a vocabulary token) is learned so that the erased model denoises
the base model's images of the concept best when S* is in the prompt:

    v* = argmin_v  E_{x0 ~ x_tgt, ε, t} ‖ε_θ'(x_t, t, c(y(v))) − ε‖²,    y = `template` with S* at {token}

No tokenizer entry is added: S* is a slot whose input embedding is v*, so it works for any text encoder
through the input-embedding table. It starts from the embedding of `init_word`. `soft_prompt_steps` is the
optimisation on its own (in `prompting`); SCORE-robust reuses it as its cheap inner attack.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from score_erasure.attacks.base import AttackConfig, AttackContext, FoundPrompt, concept_latents
from score_erasure.prompting.optimise import generator, initial_vectors, soft_prompt_steps
from score_erasure.prompting.tokens import TokenPrompt, token_prompt


class InversionConfig(AttackConfig):

    n_tokens: int = Field(1, ge=1)  # vectors in S* (textual inversion's 1)
    template: str = "{token} {prompt}"  # Pham et al. use "a photo of {token}"
    init_word: str = "thing"
    iterations: int = Field(200, ge=1)  # textual inversion runs thousands on SD; 200 suffice at 32x32
    lr: float = Field(5e-3, gt=0)
    target_images: int = Field(8, ge=1)
    batch: int = Field(4, ge=1)
    seed: int = 0

    @field_validator("template")
    @classmethod
    def _has_token(cls, template: str) -> str:
        if template.count("{token}") != 1:
            raise ValueError("the template needs exactly one {token}")
        return template

    def budget(self) -> dict:
        return {"n_tokens": self.n_tokens, "iterations": self.iterations, "target_images": self.target_images,
                "batch": self.batch}


def inversion_prompt(denoiser, template: str, prompt: str, n_tokens: int) -> TokenPrompt:
    before, after = template.replace("{prompt}", prompt).split("{token}")
    return token_prompt(denoiser, [before, n_tokens, after])


def inversion(ctx: AttackContext, prompt: str, index: int, cfg: InversionConfig) -> FoundPrompt:
    d = ctx.denoiser
    gen = generator(cfg.seed, index)
    x_tgt = concept_latents(ctx, prompt, cfg.target_images, gen)
    S_star = inversion_prompt(d, cfg.template, prompt, cfg.n_tokens)
    v_star, trace = soft_prompt_steps(d, S_star, initial_vectors(d, cfg.init_word, cfg.n_tokens), x_tgt,
                                      ctx.timesteps(), cfg.iterations, cfg.lr, cfg.batch, gen)
    readable = cfg.template.replace("{prompt}", prompt).replace("{token}", "<S*>").strip()
    return FoundPrompt(S_star, readable, vectors=v_star, exact_text=False, trace=trace)
