"""CGCE (Nguyen & Patel, arXiv 2511.05865): a small classifier on text embeddings flags the concept, and the
flagged embeddings are moved by its gradient until it no longer fires. No weight of the generator changes.

For each erased concept k, a compact cross-attention classifier reads a conditioning e (L x D, per-token
normalised to ê):

    h = tanh(ê W_k)    a = softmax(ê W_k q_k / √H)    f_k(e) = w_kᵀ Σ_l a_l h_l + b_k    p_k = σ(f_k(e))

trained (binary cross-entropy, classes weighted to balance) on the spec's prompts: those that name concept k
against the anchors, the retained prompts and the empty prompt, with Gaussian noise on the embeddings so that
its gradient is smooth. At inference a prompt with max_k p_k >= τ is refined,

    e <- e - η |e| g / |g|,    g = ∇_e Σ_k -log(1 - p_k(e))      (norms over the whole L x D embedding)

until every p_k < `target` or `steps` steps are spent; other prompts, and the unconditional row of guidance,
pass unchanged. Several concepts sum their classifiers' gradients. The edit is a forward pre-hook of the
network, saved in the delta (the classifiers' weights and the empty prompt's embedding) as Semantic Surgery's is.

The paper's method is the pipeline above: an LLM-made set of paired safe/unsafe prompts, a small classifier
on text embeddings, gradient refinement of flagged embeddings, gradients of several classifiers summed. No
code is public, and the loss, the update rule and the stopping rule are not given in what we could read; all
of these are our reading: the classifier's form (one attention head over tokens), its training data (the
spec's prompts instead of an LLM's pairs), the normalised step, the stopping target and every default.
Gradients of an attack flow through the edit as through a constant shift (the refinement itself is not
differentiated), so a white-box attack sees the hook but not its inner loop.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from score_erasure.delta import attach_hook
from score_erasure.methods.loop import Trace
from score_erasure.spec import ConceptSpec, mentions


class CGCEConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    hidden: int = Field(32, ge=1)  # H
    train_steps: int = Field(300, ge=1)
    lr: float = Field(1e-2, gt=0)
    noise: float = Field(0.1, ge=0)  # embedding noise while training, relative to the per-token scale
    threshold: float = Field(0.5, gt=0, lt=1)  # τ: a prompt is refined when some p_k >= τ
    target: float = Field(1e-4, gt=0, lt=1)  # refinement stops when every p_k < target
    step: float = Field(0.1, gt=0)  # η, relative to the embedding's norm
    steps: int = Field(30, ge=1)
    seed: int = 0


def logits(e: torch.Tensor, W: torch.Tensor, q: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """f: (B, K) for conditionings e (B, L, D) and K classifiers (W: K x D x H, q and w: K x H, b: K)."""
    e = F.layer_norm(e, e.shape[-1:])
    z = torch.einsum("bld,kdh->bklh", e, W)
    a = torch.softmax(torch.einsum("bklh,kh->bkl", z, q) / math.sqrt(W.shape[-1]), dim=-1)
    return torch.einsum("bkl,bklh,kh->bk", a, torch.tanh(z), w) + b


class Refinement:
    """The forward pre-hook: reads the conditioning, refines the rows a classifier flags, writes it back."""

    name = "cgce"

    def __init__(self, denoiser, concepts: list[str], neutral: torch.Tensor, weights: dict[str, torch.Tensor],
                 threshold: float, target: float, step: float, steps: int):
        self.denoiser, self.concepts, self.neutral, self.weights = denoiser, concepts, neutral, weights
        self.threshold, self.target, self.step, self.steps = threshold, target, step, steps
        self.refined = 0  # rows refined since installed (for tests and reports)

    def classify(self, e: torch.Tensor) -> torch.Tensor:
        return logits(e, *(self.weights[k].to(e) for k in ("W", "q", "w", "b")))

    def refine(self, e: torch.Tensor) -> torch.Tensor:
        """One conditioning row (L, D), moved until no classifier fires."""
        x = e.detach().clone()
        with torch.enable_grad():
            for _ in range(self.steps):
                x.requires_grad_(True)
                f = self.classify(x[None])[0]
                if torch.sigmoid(f).max() < self.target:
                    break
                g, = torch.autograd.grad(F.softplus(f).sum(), x)
                x = (x - self.step * x.norm() * g / g.norm().clamp(min=1e-12)).detach()
        return x.detach()

    def edit(self, e: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            p = torch.sigmoid(self.classify(e.detach())).amax(-1)
        rows = []
        for row, flagged in zip(e, (p >= self.threshold).tolist(), strict=True):
            if not flagged or torch.allclose(row, self.neutral[0].to(row), atol=1e-4, rtol=1e-3):
                rows.append(row)
            else:
                self.refined += 1
                rows.append(row + (self.refine(row) - row.detach()))  # an attack's gradient passes as through a shift
        return torch.stack(rows)

    def __call__(self, module, args, kwargs):
        return args, self.denoiser.recondition(kwargs, self.edit(self.denoiser.conditioning(kwargs)))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"neutral": self.neutral, **self.weights}

    def config(self) -> dict:
        return {"concepts": self.concepts, "threshold": self.threshold, "target": self.target, "step": self.step,
                "steps": self.steps}

    def __deepcopy__(self, memo):  # a frozen copy of the network shares the (read-only) classifiers
        twin = object.__new__(Refinement)
        twin.__dict__.update(self.__dict__)
        return twin


def install(denoiser, concepts: list[str], neutral: torch.Tensor, weights: dict[str, torch.Tensor], **settings
            ) -> Refinement:
    hook = Refinement(denoiser, list(concepts), neutral.detach(), {k: v.detach() for k, v in weights.items()},
                      **settings)
    attach_hook(denoiser.network, hook, before=True)
    return hook


def restore(denoiser, tensors: dict[str, torch.Tensor], settings: dict) -> None:
    install(denoiser, neutral=tensors["neutral"], weights={k: tensors[k] for k in ("W", "q", "w", "b")}, **settings)


def train_classifiers(positives: list[torch.Tensor], negatives: torch.Tensor, cfg: CGCEConfig) -> tuple[
        dict[str, torch.Tensor], list[float]]:
    """K classifiers at once: classifier k separates positives[k] (N_k, L, D) from the shared negatives."""
    K, D = len(positives), negatives.shape[-1]
    generator = torch.Generator().manual_seed(cfg.seed)
    weights = {"W": torch.randn(K, D, cfg.hidden, generator=generator) / math.sqrt(D),
               "q": torch.randn(K, cfg.hidden, generator=generator) / math.sqrt(cfg.hidden),
               "w": torch.zeros(K, cfg.hidden), "b": torch.zeros(K)}
    weights = {k: v.to(negatives).requires_grad_(True) for k, v in weights.items()}
    x = torch.cat([*positives, negatives])
    labels = torch.zeros(len(x), K, dtype=x.dtype, device=x.device)
    start = 0
    for k, pos in enumerate(positives):
        labels[start:start + len(pos), k] = 1
        start += len(pos)
    positive_share = labels.mean(0).clamp(1e-3, 1 - 1e-3)
    balance = torch.where(labels > 0, 0.5 / positive_share, 0.5 / (1 - positive_share))
    scale = x.std(-1, keepdim=True)
    optimiser = torch.optim.Adam(weights.values(), lr=cfg.lr)
    losses = []
    for _ in range(cfg.train_steps):
        noisy = x + cfg.noise * scale * torch.randn(x.shape, generator=generator).to(x)
        loss = F.binary_cross_entropy_with_logits(logits(noisy, **weights), labels, weight=balance)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return {k: v.detach() for k, v in weights.items()}, losses


def cgce(denoiser, spec: ConceptSpec, cfg: CGCEConfig, **_) -> Trace:
    with torch.no_grad():
        neutral = denoiser.encode([""])
        positives = [denoiser.encode([p for p in spec.target_prompts if mentions(p, [c])] or spec.target_prompts)
                     for c in spec.concepts]
        negatives = torch.cat([neutral, denoiser.encode([*spec.anchor_prompts, *spec.retain_prompts])]) if (
            spec.anchor_prompts or spec.retain_prompts) else neutral
    with torch.enable_grad():
        weights, losses = train_classifiers(positives, negatives, cfg)
    with torch.no_grad():
        p_pos = [torch.sigmoid(logits(x, **weights)[:, k]) for k, x in enumerate(positives)]
        p_neg = torch.sigmoid(logits(negatives, **weights)).amax(-1)
    install(denoiser, spec.concepts, neutral, weights, threshold=cfg.threshold, target=cfg.target, step=cfg.step,
            steps=cfg.steps)
    trace = Trace(rows=[{"step": i, "loss": v} for i, v in enumerate(losses)])
    trace.info = {"loss": losses[-1], "p_named_min": min(float(p.min()) for p in p_pos),
                  "p_other_max": float(p_neg.max())}
    return trace
