"""Paraphrases: no optimisation, only wording the erasure never saw (the analog of I2P's implicit prompts).

The attacked prompts are the protocol's held-out paraphrases (its `generality` group), compositional prompts
that put a held-out name among other attributes (on the embedded world), and any `extra_prompts` given.
"""

from __future__ import annotations

from score_erasure.attacks.base import AttackConfig, AttackContext, FoundPrompt
from score_erasure.prompting.tokens import exact_text, token_prompt


class ParaphraseConfig(AttackConfig):
    extra_prompts: tuple[str, ...] = ()
    compositional: bool = True

    def budget(self) -> dict:
        return {"optimisation": "none"}


def paraphrase_prompts(ctx: AttackContext, cfg: ParaphraseConfig) -> list[str]:
    return list(dict.fromkeys([*ctx.paraphrases, *(ctx.compositional if cfg.compositional else []),
                               *cfg.extra_prompts]))


def paraphrase(ctx: AttackContext, prompt: str, index: int, cfg: ParaphraseConfig) -> FoundPrompt:
    tokens = token_prompt(ctx.denoiser, [prompt])
    return FoundPrompt(tokens, prompt, exact_text=exact_text(ctx.denoiser, tokens))
