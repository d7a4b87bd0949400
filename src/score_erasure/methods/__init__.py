"""Erasure methods, found by name. Adding a method is adding a module and one entry of `METHODS`.

Each entry declares what the rest of the toolkit needs to know: its config class, its fit function (`FitFunction`),
what kind of change it makes (a closed-form weight edit, a fine-tune, or an inference-time hook that the delta
saves and `restore` re-installs), the network families it supports, and a smoke config that finishes in seconds on
a tiny pipeline (the tests run every entry with it). Presets are named configs of the same function (`ant` is
SCORE without the adversary).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from pydantic import BaseModel

from score_erasure.backends import FAMILIES, TOKEN_FAMILIES, Denoiser, TokenGenerator
from score_erasure.delta import COMPONENT_SEP, HookRestorer
from score_erasure.errors import UserError, validated_config
from score_erasure.methods import cgce, dumo, dve, semantic_surgery
from score_erasure.methods.advunlearn import AdvUnlearnConfig, advunlearn
from score_erasure.methods.eraseanything import EraseAnythingConfig, eraseanything
from score_erasure.methods.esd import ESDConfig, esd
from score_erasure.methods.esd_tokens import ESDTokensConfig, esd_tokens
from score_erasure.methods.loop import Checkpointing, Trace
from score_erasure.methods.mace import MACEConfig, mace
from score_erasure.methods.rece import RECEConfig, rece
from score_erasure.methods.s_vare import SVAREConfig, s_vare
from score_erasure.methods.salun import SalUnConfig, salun
from score_erasure.methods.score import SCORE_DEFAULTS, ScoreConfig, score
from score_erasure.methods.score_robust import ScoreRobustConfig, score_robust
from score_erasure.methods.score_tokens import ScoreTokensConfig, score_tokens
from score_erasure.methods.sdd import SDDConfig, sdd
from score_erasure.methods.trace import TRACEConfig, trace
from score_erasure.methods.trce import TRCEConfig, trce
from score_erasure.methods.uce import UCEConfig, uce
from score_erasure.methods.vce import VCEConfig, vce
from score_erasure.spec import ConceptSpec

MethodKind = Literal["weight-edit", "fine-tune", "hook"]


class FitFunction(Protocol):
    """Edit the denoiser's network in place (or attach a hook to it); return a Trace of the run, or None. A method
    of an autoregressive family gets the model's TokenGenerator instead."""

    def __call__(self, denoiser: Denoiser | TokenGenerator, spec: ConceptSpec, config: BaseModel,
                 checkpointing: Checkpointing | None = None, show_progress: bool = True) -> Trace | None: ...


@dataclass(frozen=True)
class Method:
    name: str
    fit: FitFunction
    config_class: type[BaseModel]
    kind: MethodKind
    summary: str
    preset: dict = field(default_factory=dict)
    smoke: dict = field(default_factory=dict)  # overrides that finish in seconds on a tiny pipeline
    families: tuple[str, ...] = FAMILIES  # diffusion families, or autoregressive ones (backends.TOKEN_FAMILIES)
    groups: tuple[str, ...] = ()  # the parameter groups it edits, where one `group` of its config does not say
    restore: HookRestorer | None = None  # hook methods: re-installs the hook saved in a delta under `name`
    edits_text_encoder: bool = False  # trains the text encoder (AdvUnlearn): the delta carries its weights too

    @property
    def edits_weights(self) -> bool:
        """False for an inference-time hook: saved in the delta, lost by save_pretrained."""
        return self.kind != "hook"

    def edited_groups(self, config: BaseModel) -> tuple[str, ...]:
        """The network's parameter groups whose weights a run with `config` may change."""
        return self.groups or ((config.group,) if hasattr(config, "group") else ())

    def components(self, denoiser: Denoiser | TokenGenerator) -> tuple[str, ...]:
        """The pipeline components besides the network that a run may change (their attributes)."""
        return (denoiser.text_encoder_attr,) if self.edits_text_encoder else ()

    def may_change(self, denoiser: Denoiser | TokenGenerator, config: BaseModel) -> set[str]:
        """The parameters a run with `config` may change, named as its delta names them."""
        names = set().union(*(denoiser.parameters(g) for g in self.edited_groups(config)))
        if self.edits_text_encoder:
            names |= {f"{denoiser.text_encoder_attr}{COMPONENT_SEP}{k}" for k in denoiser.text_encoder_weights()}
        return names

    def config(self, overrides: dict | None = None) -> BaseModel:
        return validated_config(self.config_class, {**self.preset, **(overrides or {})}, self.name)

    def check_supports(self, denoiser: Denoiser | TokenGenerator) -> None:
        if denoiser.family not in self.families:
            raise UserError(f"'{self.name}' does not run on {denoiser.family.upper()} models (it supports "
                            f"{', '.join(f.upper() for f in self.families)}); pick another method")


_FAST_SCORE = dict(iterations=2, steps=4, d_pretrain=2, saliency_seeds=(1, 2), saliency_prompts=1,
                   saliency_iterations=1, bank_per_prompt=1, adv_ramp=1)
_FAST_ESD = dict(iterations=2, steps=4)

METHODS: dict[str, Method] = {m.name: m for m in (
    Method("score", score, ScoreConfig, "fine-tune", "SCORE: adversarial independence + trajectory + saliency",
           preset=SCORE_DEFAULTS, smoke=_FAST_SCORE),
    Method("ant", score, ScoreConfig, "fine-tune", "ANT: SCORE without the adversarial term",
           preset={"adversarial": False}, smoke=_FAST_SCORE),
    Method("fade", score, ScoreConfig, "fine-tune", "FADE: SCORE's objective, as its authors' flow-model paper "
           "states it (a preset of score)", preset=SCORE_DEFAULTS, smoke=_FAST_SCORE),
    Method("esd-x", esd, ESDConfig, "fine-tune", "ESD on cross-attention", preset={"group": "xattn"},
           smoke=_FAST_ESD),
    Method("esd-u", esd, ESDConfig, "fine-tune", "ESD on everything but cross-attention",
           preset={"group": "non-xattn"}, smoke=_FAST_ESD),
    Method("esd", esd, ESDConfig, "fine-tune", "ESD as LoRA on the text attention, merged (EraseAnything's form, "
           "for FLUX)", preset={"group": "xattn", "lora_rank": 4, "lr": 1e-3}, smoke=_FAST_ESD),
    Method("eraseanything", eraseanything, EraseAnythingConfig, "fine-tune", "EraseAnything: a LoRA on the text "
           "stream's queries and keys, erasure (ESD + attention to the keyword) and preservation steps in turn",
           smoke={"iterations": 2, "steps": 3, "images": 1}, families=("flux",)),
    Method("sdd", sdd, SDDConfig, "fine-tune", "SDD: the concept's prediction distilled onto the model's own "
           "unconditional one; the EMA teacher is the output", smoke=_FAST_ESD),
    Method("salun", salun, SalUnConfig, "fine-tune", "SalUn: the concept remapped onto its anchor, trained only "
           "on the weights most salient for it", smoke={"iterations": 2, "images": 4, "steps": 2, "batch": 2}),
    Method("advunlearn", advunlearn, AdvUnlearnConfig, "fine-tune", "AdvUnlearn: ESD on the text encoder against a "
           "soft-prompt adversary, with a retain loss", smoke={"iterations": 2, "warmup": 1, "attack_steps": 2,
                                                              "trajectories": 2, "retain_trajectories": 2, "steps": 3},
           families=("sd", "flux"), edits_text_encoder=True),
    Method("uce", uce, UCEConfig, "weight-edit", "UCE closed-form edit of cross-attention K/V"),
    Method("mace", mace, MACEConfig, "fine-tune", "MACE: closed-form refinement, one LoRA per concept on its "
           "attention maps, closed-form fusion", smoke={"lora_steps": 2, "images": 1, "steps": 2},
           families=("sd", "sdxl")),
    Method("rece", rece, RECEConfig, "weight-edit", "RECE: UCE, then rounds erasing the embedding that still "
           "regenerates the concept"),
    Method("trce", trce, TRCEConfig, "fine-tune", "TRCE: closed-form edit of the end token, then a triplet "
           "fine-tune of the early steps", smoke={"iterations": 2, "trajectories": 2, "preserve_trajectories": 1,
                                                  "steps": 4, "early": 2}, families=("sd", "sdxl"),
           groups=("xattn-kv", "image-attn")),
    Method("trace", trace, TRACEConfig, "fine-tune", "TRACE: UCE's closed form, then ANT's fine-tune at the late "
           "steps only (our reading: no code)", smoke=_FAST_SCORE),
    Method("score-robust", score_robust, ScoreRobustConfig, "fine-tune",
           "SCORE + prompts an inner attack finds on the fly",
           smoke={**_FAST_SCORE, "attack_every": 1, "attack_iterations": 1}),
    Method("dumo", dumo.dumo, dumo.DuMoConfig, "hook", "DuMo: a trained copy of the UNet's encoder adds erasing "
           "residuals to its skip connections, scaled per timestep and layer (the UNet frozen)",
           smoke={"iterations": 2, "trajectories": 2, "retain_trajectories": 2, "steps": 3, "lr": 1e-2},
           families=("sd",), restore=dumo.restore),
    Method("dve", dve.dve, dve.DVEConfig, "hook",
           "DVE: training-free projection of the field off the concept direction", restore=dve.restore),
    Method("semantic-surgery", semantic_surgery.semantic_surgery, semantic_surgery.SemanticSurgeryConfig, "hook",
           "Semantic Surgery: the concept direction subtracted from the text embedding, gated by its presence",
           restore=semantic_surgery.restore),
    Method("cgce", cgce.cgce, cgce.CGCEConfig, "hook",
           "CGCE: a classifier on text embeddings flags the concept; flagged embeddings follow its gradient away",
           smoke={"train_steps": 20, "steps": 3}, restore=cgce.restore),
    Method("s-vare", s_vare, SVAREConfig, "fine-tune", "S-VARE (autoregressive): under the concept prompt, the "
           "codes the base draws for the safe prompt, filtered cross-entropy + KL preservation",
           smoke={"iterations": 2, "sequences_per_prompt": 1}, families=TOKEN_FAMILIES),
    Method("vce", vce, VCEConfig, "fine-tune", "VCE (autoregressive): DPO preferring the concept-free image of each "
           "contrastive pair, token-level average with token drop", smoke={"iterations": 2, "pairs_per_prompt": 1},
           families=TOKEN_FAMILIES),
    Method("esd-ar", esd_tokens, ESDTokensConfig, "fine-tune", "ESD on an autoregressive generator: its own "
           "negative guidance on code logits, at every position of sequences it draws (a baseline; our reading)",
           smoke={"iterations": 2}, families=TOKEN_FAMILIES),
    Method("score-ar", score_tokens, ScoreTokensConfig, "fine-tune", "SCORE on an autoregressive generator: "
           "negative guidance on code logits, a discriminator on the expected code grid, KL preservation (our "
           "reading)", smoke={"iterations": 2, "d_pretrain": 1, "sequences_per_prompt": 1}, families=TOKEN_FAMILIES),
)}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise UserError(f"unknown method '{name}'; choose one of: {', '.join(METHODS)}")
    return METHODS[name]


def hook_restorers() -> dict[str, HookRestorer]:
    """How to re-install each inference-time hook a delta may carry, by hook name (the method's name)."""
    return {m.name: m.restore for m in METHODS.values() if m.restore is not None}
