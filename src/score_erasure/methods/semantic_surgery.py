"""Semantic Surgery (Xiong et al., NeurIPS 2025): training-free erasure by editing the text embedding.

For a prompt's conditioning e (L x D), the empty prompt's e_n and each erased concept's own embedding e_c:

    α_c = mean over tokens of cos(e_c - e_n, e)          how strongly the prompt carries concept c
    ρ_c = sigmoid((α_c + b_c) / γ)                         its presence estimate
    A   = {c : ρ_c >= τ}                                   the concepts present
    e'  = e - max_{c in A} ρ_c · (φ(", ".join(A)) - e_n)    one joint direction subtracted, scaled

φ is the text encoder. A prompt with no concept present (A empty) passes unchanged, and so does the
unconditional row of classifier-free guidance. The edit is a forward pre-hook of the network: it applies to
whatever conditioning reaches the network (the pipeline's, an attack's soft prompt) and is saved in the
delta (e_n, the e_c, the gate's settings) as DVE's projection is.

Our reading, where the paper leaves a choice: it tunes b per task from plots of α on prompts with and without
the concept (b = -0.06 for CLIP on I2P). `bias=None`, the default, sets each b_c from the spec instead: the
threshold -b_c lies halfway between the lowest α_c of the target prompts that name c and the highest over the
anchor and retained prompts (halfway between their means when the two overlap). The paper's optional visual
feedback (a detector, then a second pass at full strength) is not built. Where the conditioning carries a
pooled vector (SDXL, FLUX) it is one more token of e, edited with the others.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from score_erasure.delta import attach_hook
from score_erasure.methods.loop import Trace
from score_erasure.spec import ConceptSpec, mentions


class SemanticSurgeryConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    gamma: float = Field(0.02, gt=0)  # γ, the gate's temperature (the paper's)
    threshold: float = Field(0.5, gt=0, lt=1)  # τ: a concept counts as present when ρ_c >= τ
    bias: float | None = None  # b for every concept; None: each b_c calibrated on the spec's prompts


def presence(e: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """α: (B, K) mean token-wise cosine between each conditioning (B, L, D) and each direction (K, L, D)."""
    return F.cosine_similarity(e[:, None], directions[None], dim=-1).mean(-1)


class Surgery:
    """The forward pre-hook: reads the conditioning from the network's arguments and writes the edited one."""

    name = "semantic-surgery"

    def __init__(self, denoiser, concepts: list[str], neutral: torch.Tensor, concept: torch.Tensor,
                 bias: torch.Tensor, gamma: float, threshold: float):
        self.denoiser, self.concepts = denoiser, concepts
        self.neutral, self.concept, self.bias = neutral, concept, bias
        self.gamma, self.threshold = gamma, threshold
        self.joint_cache: dict[tuple[int, ...], torch.Tensor] = {}

    def joint(self, active: tuple[int, ...]) -> torch.Tensor:
        """φ of the present concepts' names joined by commas (one concept: its own embedding)."""
        if len(active) == 1:
            return self.concept[active[0]]
        if active not in self.joint_cache:
            with torch.no_grad():
                self.joint_cache[active] = self.denoiser.encode([", ".join(self.concepts[i] for i in active)])[0]
        return self.joint_cache[active]

    def edit(self, e: torch.Tensor) -> torch.Tensor:
        n, c = self.neutral.to(e), self.concept.to(e)
        rho = torch.sigmoid((presence(e, c - n) + self.bias.to(e)) / self.gamma)
        rows = []
        for row, r in zip(e, rho, strict=True):
            active = tuple(int(i) for i in torch.nonzero(r >= self.threshold).flatten())
            unconditional = torch.allclose(row, n[0], atol=1e-4, rtol=1e-3)
            if not active or unconditional:
                rows.append(row)
            else:
                rows.append(row - r[list(active)].max() * (self.joint(active).to(row) - n[0]))
        return torch.stack(rows)

    def __call__(self, module, args, kwargs):
        return args, self.denoiser.recondition(kwargs, self.edit(self.denoiser.conditioning(kwargs)))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"neutral": self.neutral, "concept": self.concept, "bias": self.bias}

    def config(self) -> dict:
        return {"concepts": self.concepts, "gamma": self.gamma, "threshold": self.threshold}

    def __deepcopy__(self, memo):  # a frozen copy of the network shares the (read-only) embeddings
        twin = object.__new__(Surgery)
        twin.__dict__.update(self.__dict__)
        return twin


def install(denoiser, concepts: list[str], neutral: torch.Tensor, concept: torch.Tensor, bias: torch.Tensor,
            gamma: float, threshold: float) -> Surgery:
    hook = Surgery(denoiser, list(concepts), neutral.detach(), concept.detach(), bias.detach(), gamma, threshold)
    attach_hook(denoiser.network, hook, before=True)
    return hook


def restore(denoiser, tensors: dict[str, torch.Tensor], settings: dict) -> None:
    install(denoiser, neutral=tensors["neutral"], concept=tensors["concept"], bias=tensors["bias"], **settings)


def calibrated_bias(alpha_named: torch.Tensor, alpha_other: torch.Tensor) -> float:
    """-b: halfway between the lowest α of prompts naming the concept and the highest of the others (their
    means when the two overlap)."""
    low, high = alpha_named.min(), alpha_other.max()
    middle = (low + high) / 2 if low > high else (alpha_named.mean() + alpha_other.mean()) / 2
    return -float(middle)


@torch.no_grad()
def semantic_surgery(denoiser, spec: ConceptSpec, cfg: SemanticSurgeryConfig, **_) -> Trace:
    neutral, concept = denoiser.encode([""]), denoiser.encode(spec.concepts)
    directions = concept - neutral
    trace = Trace()
    if cfg.bias is not None:
        bias = torch.full((len(spec.concepts),), cfg.bias)
    else:
        others = [*spec.anchor_prompts, *spec.retain_prompts]
        alpha_other = presence(denoiser.encode(others), directions)
        biases = []
        for k, name in enumerate(spec.concepts):
            named = [p for p in spec.target_prompts if mentions(p, [name])] or spec.target_prompts
            alpha_named = presence(denoiser.encode(named), directions[k:k + 1])[:, 0]
            biases.append(calibrated_bias(alpha_named, alpha_other[:, k]))
            trace.info |= {f"alpha_named_min.{name}": float(alpha_named.min()),
                           f"alpha_other_max.{name}": float(alpha_other[:, k].max()), f"bias.{name}": biases[-1]}
        bias = torch.tensor(biases)
    install(denoiser, spec.concepts, neutral, concept, bias.to(neutral), cfg.gamma, cfg.threshold)
    return trace
