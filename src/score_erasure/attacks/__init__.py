"""Attacks on erased models, found by name. Adding an attack is adding a module and one entry of `ATTACKS`.

An attack is `run(ctx, prompt, index, config) -> FoundPrompt`: from one prompt of the protocol it finds the tokens
(or free token vectors) that bring the concept back on the model in `ctx.denoiser`. Its config derives from
`AttackConfig`, which makes it declare its budget. `prompts(ctx, config)` says which prompts it starts from: the
protocol's target prompts, except for `paraphrase`. `smoke` is a budget that runs in about a second per prompt on a
tiny pipeline (the tests run every entry with it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from score_erasure.attacks.base import AttackConfig, AttackContext, FoundPrompt
from score_erasure.attacks.inversion import InversionConfig, inversion, inversion_prompts
from score_erasure.attacks.p4d import P4DConfig, p4d
from score_erasure.attacks.paraphrase import ParaphraseConfig, paraphrase, paraphrase_prompts
from score_erasure.attacks.ring_a_bell import RingABellConfig, ring_a_bell
from score_erasure.attacks.unlearndiff import UnlearnDiffConfig, unlearndiff
from score_erasure.errors import UserError, validated_config


def target_prompts(ctx: AttackContext, cfg: AttackConfig) -> list[str]:
    return list(ctx.targets)


@dataclass(frozen=True)
class Attack:
    name: str
    run: Callable[[AttackContext, str, int, AttackConfig], FoundPrompt]
    config_class: type[AttackConfig]
    summary: str
    prompts: Callable[[AttackContext, AttackConfig], list[str]] = target_prompts
    preset: dict = field(default_factory=dict)  # a named form of another entry's config (`inversion-word`)
    smoke: dict = field(default_factory=dict)

    def config(self, overrides: dict | None = None) -> AttackConfig:
        return validated_config(self.config_class, {**self.preset, **(overrides or {})}, self.name)


ATTACKS: dict[str, Attack] = {a.name: a for a in (
    Attack("unlearndiff", unlearndiff, UnlearnDiffConfig, "UnlearnDiffAtk: prepended tokens chosen by the erased "
           "model's own denoising loss on concept images",
           smoke=dict(iterations=3, target_images=1, batch=1, select_every=2)),
    Attack("p4d", p4d, P4DConfig, "P4D: tokens that make the erased model predict what the base predicts",
           smoke=dict(n_tokens=4, iterations=3, target_images=1, batch=1, select_every=2)),
    Attack("ring-a-bell", ring_a_bell, RingABellConfig, "Ring-A-Bell: genetic token search towards prompt + "
           "concept vector (text encoder only)", smoke=dict(n_tokens=4, population=6, generations=3)),
    Attack("inversion", inversion, InversionConfig, "concept inversion: textual inversion of a new word against "
           "the erased model, beside each target prompt", inversion_prompts,
           smoke=dict(iterations=3, target_images=1, batch=1)),
    Attack("inversion-word", inversion, InversionConfig, "concept inversion as Pham et al.: one new word learned "
           "alone (\"a <S*>\", no concept word), drawn in four templates", inversion_prompts,
           preset=dict(form="word", iterations=400, target_images=32, batch=16),
           smoke=dict(iterations=3, target_images=2, batch=1)),
    Attack("paraphrase", paraphrase, ParaphraseConfig, "held-out paraphrases and compositional prompts",
           paraphrase_prompts),
)}


def get_attack(name: str) -> Attack:
    if name not in ATTACKS:
        raise UserError(f"unknown attack '{name}'; choose one of: {', '.join(ATTACKS)}")
    return ATTACKS[name]


__all__ = ["ATTACKS", "Attack", "AttackConfig", "AttackContext", "FoundPrompt", "get_attack"]
