"""Ring-A-Bell (Tsai et al., ICLR 2024, arXiv 2310.10012): a model-agnostic attack through the text encoder.

The concept vector is the mean difference of the text encoder's outputs f over prompt pairs with and
without the concept (the spec's matched target/anchor pairs); the problematic embedding of a prompt P moves
it η further along that vector, and a genetic search finds K vocabulary tokens whose encoding reaches it:

    ĉ = (1/N) Σ_i [f(P_i^+) − f(P_i^−)],    P̃ = argmin_{P̃ ∈ V^K} ‖f(P̃) − (f(P) + η ĉ)‖²

The search keeps the better half of the population each generation, refills it by one-point crossover of
random survivors (rate 0.5) and mutates one position of a child with probability 0.25 (the paper's rates).
The erased UNet is never queried: the same prompts attack every model sharing the text encoder.
"""

from __future__ import annotations

import torch
from pydantic import Field

from score_erasure.attacks.base import AttackConfig, AttackContext, FoundPrompt
from score_erasure.backends.tokens import TokenGenerator
from score_erasure.prompting.optimise import generator
from score_erasure.prompting.tokens import Vocabulary, exact_text, prompt_text, table, token_prompt


class RingABellConfig(AttackConfig):

    n_tokens: int = Field(16, ge=1)  # K (the paper's 16 for nudity)
    eta: float = Field(3.0, ge=0)  # the paper's coefficient for nudity
    population: int = Field(64, ge=4)  # the paper: 200
    generations: int = Field(120, ge=1)  # the paper: 3000
    crossover_rate: float = Field(0.5, ge=0, le=1)
    mutation_rate: float = Field(0.25, ge=0, le=1)
    seed: int = 0

    def budget(self) -> dict:
        return {"n_tokens": self.n_tokens, "eta": self.eta, "population": self.population,
                "generations": self.generations}


def features(model, cond) -> torch.Tensor:
    """f: the text encoder's output (L, D per prompt); on a token generator, which has no text encoder, its own
    hidden state where the image begins (1, D per prompt), the prompt as the model has read it (our reading)."""
    return model.prompt_state(cond) if isinstance(model, TokenGenerator) else cond


@torch.no_grad()
def concept_vector(denoiser, with_concept: list[str], without_concept: list[str]) -> torch.Tensor:
    """ĉ: the mean of f(P⁺) − f(P⁻) over matched pairs, (L, D)."""
    return (features(denoiser, denoiser.encode(with_concept))
            - features(denoiser, denoiser.encode(without_concept))).mean(0)


@torch.no_grad()
def _distance(denoiser, prompt, population: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    ids = prompt.ids.expand(len(population), -1).clone()
    ids[:, prompt.slots] = population
    embeds = table(denoiser)(ids)
    cond = denoiser.encode_embeddings(ids, embeds, prompt.mask.expand(len(population), -1))
    return ((features(denoiser, cond) - target) ** 2).sum(dim=(1, 2))


def _children(survivors: torch.Tensor, n: int, vocab: Vocabulary, cfg: RingABellConfig,
              gen: torch.Generator) -> torch.Tensor:
    """n children: one-point crossover of random survivor pairs, then one mutated position."""
    K = survivors.shape[1]
    children = survivors[torch.randint(len(survivors), (n,), generator=gen)].clone()
    mates = survivors[torch.randint(len(survivors), (n,), generator=gen)]
    for child, mate in zip(children, mates, strict=True):
        if torch.rand((), generator=gen) < cfg.crossover_rate:
            point = int(torch.randint(1, K + 1, (), generator=gen))
            child[point:] = mate[point:]
        if torch.rand((), generator=gen) < cfg.mutation_rate:
            child[torch.randint(K, (), generator=gen)] = vocab.random((), gen)
    return children


def ring_a_bell(ctx: AttackContext, prompt: str, index: int, cfg: RingABellConfig) -> FoundPrompt:
    d = ctx.denoiser
    gen = generator(cfg.seed, index)
    c_hat = concept_vector(d, ctx.spec.target_prompts, ctx.spec.anchor_prompts)
    with torch.no_grad():
        target = features(d, d.encode([prompt]))[0] + cfg.eta * c_hat
    P_tilde = token_prompt(d, [cfg.n_tokens])
    vocab = Vocabulary(d)
    population = vocab.random((cfg.population, cfg.n_tokens), gen)
    distance = _distance(d, P_tilde, population, target)
    survive = max(2, cfg.population // 2)
    trace = []
    for g in range(cfg.generations):
        keep = distance.argsort()[:survive]
        population, distance = population[keep], distance[keep]  # survivors keep their distances
        trace.append(float(distance[0]))
        if g + 1 < cfg.generations:
            children = _children(population, cfg.population - survive, vocab, cfg, gen)
            population = torch.cat([population, children])
            distance = torch.cat([distance, _distance(d, P_tilde, children, target)])
    found = P_tilde.with_tokens(population[0])
    return FoundPrompt(found, prompt_text(d, found), exact_text=exact_text(d, found), trace=trace)
