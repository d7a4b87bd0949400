"""SCORE-robust: SCORE whose concept set grows with prompts a cheap inner attack finds on the fly.

Every `attack_every` steps, a soft-prompt attack (concept inversion's `soft_prompt_steps`, a few Adam steps on
`attack_tokens` free token vectors prepended to one target prompt) searches for the conditioning under which
the *current* model ε_θ denoises the base model's images of that prompt best:

    δ* ≈ argmin_δ E_{t, ε} ‖ε_θ(x_t, t, c([δ; P])) − target(x0, ε, t)‖²,    x0 ~ base samples of P

c([δ*; P]) then joins c_e, the prompts labelled C = 1: the erasure term, the trajectory terms and the
discriminator's concept branch all draw from it (as AdvUnlearn adds its adversarial prompts to the unlearning
objective). At most `max_adversarial` found prompts are kept, the oldest dropped. With `persistent`, each target
prompt keeps one adversarial δ that every later inner attack on it continues from (persistent adversarial
examples): over a run the attack accumulates attack_iterations x (iterations / attack_every) steps, the budget
of a real inversion attack, instead of restarting from a neutral word each time. With `attack_form = "word"` the
adversary is concept inversion's canonical form instead: one word δ alone in the templates "a <δ>", "a picture of
a <δ>", ... (no concept word), each inner attack on a random template and on the base model's images of every
target prompt, one δ shared across templates; "both" draws each inner attack's prompt from either form. Found
prompts are not checkpointed: a resumed run starts finding them afresh.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field

from score_erasure.methods.loop import Checkpointing, Trace
from score_erasure.methods.score import ScoreConfig, ScoreTraining, score
from score_erasure.prompting.optimise import generator, initial_vectors, soft_prompt_steps
from score_erasure.prompting.tokens import WORD_TEMPLATES, template_prompt, token_prompt
from score_erasure.spec import ConceptSpec


class ScoreRobustConfig(ScoreConfig):
    # Persistent attacks over twice SCORE's training: every attack took ASR and leakage down (docs/results.md),
    # paid in fidelity and time; restarting 5-step attacks every 10 steps (the old default) changed nothing.
    iterations: int = Field(200, ge=1)
    # when the inner attack runs, on how many free tokens, and whether it continues where it stopped
    attack_every: int = Field(2, ge=1)
    attack_tokens: int = Field(3, ge=1)
    persistent: bool = True  # continue each target prompt's δ across inner attacks instead of restarting it
    # each inner attack's own optimisation, and how many found prompts are kept
    attack_iterations: int = Field(10, ge=1)
    attack_lr: float = Field(1e-2, gt=0)
    attack_batch: int = Field(2, ge=1)
    max_adversarial: int = Field(8, ge=1)
    # "prompt": δ before each target prompt; "word": δ alone in WORD_TEMPLATES (concept inversion's form);
    # "both": each inner attack picks one of the two forms' prompts at random
    attack_form: Literal["prompt", "word", "both"] = "prompt"
    # what the erasure term steers a found conditioning away from: ∅ (as before), or the anchor of its target
    adversarial_reference: Literal["empty", "anchor"] = "empty"


class RobustScoreTraining(ScoreTraining):
    def __init__(self, denoiser, spec: ConceptSpec, cfg: ScoreRobustConfig):
        super().__init__(denoiser, spec, cfg)
        self.c_clean = self.c_e
        # (prompt, is_word): the target prompts first, so that index i < len(targets) is target prompt i
        self.attack_prompts = [(token_prompt(denoiser, [cfg.attack_tokens, p]), False) for p in spec.target_prompts
                               if cfg.attack_form != "word"]
        self.attack_prompts += [(template_prompt(denoiser, t, "", cfg.attack_tokens), True) for t in WORD_TEMPLATES
                                if cfg.attack_form != "prompt"]
        self.n_targets = sum(not w for _, w in self.attack_prompts)
        self.found: list[tuple[torch.Tensor, int | None]] = []  # (conditioning, anchor index or None: ∅)
        self.vectors: dict[int, torch.Tensor] = {}  # persistent δ per target prompt (key -1: the word)
        self.by_prompt: dict[int, tuple[torch.Tensor, int | None]] = {}

    def inner_attack(self, k: int) -> float:
        """Attack one target prompt on the current model; its found conditioning joins c_e."""
        cfg, d = self.cfg, self.denoiser
        i = int(np.random.default_rng([cfg.seed, 4, k]).integers(len(self.attack_prompts)))
        prompt, word = self.attack_prompts[i]
        x_tgt = self.bank_e[0] if word else self.bank_e[0][self.bank_e[1] == i]  # base samples of prompt i (or all)
        key = -1 if word else i  # the word: one δ for all templates
        start = self.vectors.get(key) if cfg.persistent else None
        v, trace = soft_prompt_steps(d, prompt, initial_vectors(d, "thing", cfg.attack_tokens) if start is None
                                     else start, x_tgt, self.t, cfg.attack_iterations, cfg.attack_lr,
                                     cfg.attack_batch, generator(cfg.seed, 4, k))
        with torch.no_grad():
            found = (prompt.condition(d, v), self.anchor_of(i, word))
        if cfg.persistent:  # one δ per target prompt (or one word), its conditioning replaced as δ moves on
            self.vectors[key] = v.detach()
            self.by_prompt[i] = found
            self.found = list(self.by_prompt.values())[-cfg.max_adversarial:]
        else:
            self.found = [*self.found, found][-cfg.max_adversarial:]
        self.c_e = torch.cat([self.c_clean, *(c for c, _ in self.found)])
        return trace[-1]

    def anchor_of(self, i: int, word: bool) -> int | None:
        """The anchor that finds of attack prompt i are steered from with adversarial_reference "anchor" (None: ∅):
        target prompt i's matched anchor; for the word in template j, anchor j, cyclically."""
        n_a = len(self.c_a)
        if self.cfg.adversarial_reference == "empty" or not n_a:
            return None
        if word:
            return (i - self.n_targets) % n_a
        return i if i < n_a else None

    def reference(self, i: int) -> torch.Tensor:
        """A found conditioning's reference: ∅ (`adversarial_reference = "empty"`) or its target's anchor."""
        n = len(self.c_clean)
        if i < n:
            return super().reference(i)
        a = self.found[i - n][1]
        return self.uncond if a is None else self.c_a[a:a + 1]

    def step(self, k: int) -> tuple[torch.Tensor, dict[str, float]]:
        found = {"attack": self.inner_attack(k)} if k % self.cfg.attack_every == 0 else {}
        loss, terms = super().step(k)
        return loss, {**terms, **found}


def score_robust(denoiser, spec: ConceptSpec, cfg: ScoreRobustConfig, checkpointing: Checkpointing | None = None,
                 show_progress: bool = True) -> Trace:
    return score(denoiser, spec, cfg, checkpointing, show_progress, training=RobustScoreTraining)
