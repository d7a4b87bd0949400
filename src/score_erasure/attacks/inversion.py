"""Concept inversion (Pham et al., ICLR 2024, arXiv 2308.01508): textual inversion against the erased model.

A new word S* with free embedding v* (not a vocabulary token) is learned so that the erased model denoises
the base model's images of the concept best when S* is in the prompt:

    v* = argmin_v  E_{x0 ~ x_tgt, ε, t} ‖ε_θ'(x_t, t, c(y(v))) − ε‖²

Two forms. `prompt` (the project's first): one S* per target prompt, in `template` beside the prompt itself
("<S*> a star in red"), so the erased word is in the prompt too. `word` (Pham et al.'s, the `inversion-word`
attack): one S* for the concept, learned alone in `templates` ("a <S*>", "a picture of a <S*>"; no concept word)
on the base model's images of every target prompt, then each template is drawn: what an erasure must hold
against when the concept's name is gone from the prompt altogether.

No tokenizer entry is added: S* is a slot whose input embedding is v*, so it works for any text encoder
through the input-embedding table. It starts from the embedding of `init_word`. `soft_prompt_steps` is the
optimisation on its own (in `prompting`); SCORE-robust reuses it as its cheap inner attack.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, field_validator

from score_erasure.attacks.base import AttackConfig, AttackContext, FoundPrompt, concept_latents
from score_erasure.prompting.optimise import generator, initial_vectors, soft_prompt_steps
from score_erasure.prompting.tokens import WORD_TEMPLATES, template_prompt


class InversionConfig(AttackConfig):

    form: Literal["prompt", "word"] = "prompt"
    n_tokens: int = Field(1, ge=1)  # vectors in S* (textual inversion's 1)
    template: str = "{token} {prompt}"  # form "prompt": where S* and the target prompt go
    templates: tuple[str, ...] = WORD_TEMPLATES  # form "word": the prompts S* is learned and drawn in
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

    @field_validator("templates")
    @classmethod
    def _word_alone(cls, templates: tuple[str, ...]) -> tuple[str, ...]:
        if not templates or any(t.count("{token}") != 1 or "{prompt}" in t for t in templates):
            raise ValueError("each of the templates needs exactly one {token} and no {prompt}")
        return templates

    def budget(self) -> dict:
        return {"form": self.form, "n_tokens": self.n_tokens, "iterations": self.iterations,
                "target_images": self.target_images, "batch": self.batch}


def inversion_prompts(ctx: AttackContext, cfg: InversionConfig) -> list[str]:
    """The prompts attacked: the protocol's target prompts, or (form "word") the templates of the learned word."""
    return list(cfg.templates) if cfg.form == "word" else list(ctx.targets)


def learned_word(ctx: AttackContext, cfg: InversionConfig) -> tuple[torch.Tensor, list[float]]:
    """Form "word": S* learned once per attack run on `target_images` base images spread over the target
    prompts, in every template in turn; kept in `ctx.memo` for the other templates."""
    key = ("inversion-word", cfg)
    if key not in ctx.memo:
        d, gen = ctx.denoiser, generator(cfg.seed)
        per_prompt = math.ceil(cfg.target_images / len(ctx.targets))
        x_tgt = torch.cat([concept_latents(ctx, p, per_prompt, gen) for p in ctx.targets])[:cfg.target_images]
        templates = [template_prompt(d, t, "", cfg.n_tokens) for t in cfg.templates]
        ctx.memo[key] = soft_prompt_steps(d, templates, initial_vectors(d, cfg.init_word, cfg.n_tokens), x_tgt,
                                          ctx.timesteps(), cfg.iterations, cfg.lr, cfg.batch, gen)
    return ctx.memo[key]


def inversion(ctx: AttackContext, prompt: str, index: int, cfg: InversionConfig) -> FoundPrompt:
    d = ctx.denoiser
    if cfg.form == "word":  # `prompt` is one of the templates
        v_star, trace = learned_word(ctx, cfg)
        return FoundPrompt(template_prompt(d, prompt, "", cfg.n_tokens), prompt.replace("{token}", "<S*>"),
                           vectors=v_star, exact_text=False, trace=trace)
    gen = generator(cfg.seed, index)
    x_tgt = concept_latents(ctx, prompt, cfg.target_images, gen)
    S_star = template_prompt(d, cfg.template, prompt, cfg.n_tokens)
    v_star, trace = soft_prompt_steps(d, S_star, initial_vectors(d, cfg.init_word, cfg.n_tokens), x_tgt,
                                      ctx.timesteps(), cfg.iterations, cfg.lr, cfg.batch, gen)
    readable = cfg.template.replace("{prompt}", prompt).replace("{token}", "<S*>").strip()
    return FoundPrompt(S_star, readable, vectors=v_star, exact_text=False, trace=trace)
