"""ESD carried over to autoregressive generators (`esd-ar`, a baseline for S-VARE and VCE): the model learns its
own negative guidance, with the code positions of a sequence in place of the timesteps.

    r          ~ p_θ(· | c)                      the model being trained draws a sequence for the concept prompt
    log q_i    = log softmax( l_0(∅, r_<i) − η (l_0(c, r_<i) − l_0(∅, r_<i)) )
    L          = (1/N) Σ_i KL( q_i ‖ p_θ(· | r_<i, c) )

l_0 are the frozen base model's code logits; guidance on logits is how the generator samples, so ESD's target
(ε_0(∅) − η(ε_0(c) − ε_0(∅))) becomes the distribution a negative guidance scale −η would sample. As ESD draws
x_t from the model being trained, r comes from it (on-policy), and every position of r is trained at once
(teacher forcing) where ESD trains one timestep per step. Our reading: ESD has no autoregressive form in its
paper. The layers trained are S-VARE's (attention and feed-forward) and the budget is S-VARE's (iterations, lr),
so that the two rows differ in the objective only.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from score_erasure import parallel
from score_erasure.backends.tokens import TokenConditioning, code_kl
from score_erasure.methods.loop import Checkpointing, Trace, finetune, trainable
from score_erasure.spec import ConceptSpec


class ESDTokensConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    group: str = "attention+ffn"
    iterations: int = Field(500, ge=1)
    lr: float = Field(5e-5, gt=0)
    eta: float = Field(1.0, ge=0)  # negative-guidance scale
    guidance: float = 5.0  # the model's when it draws r
    seed: int = 0


def negative_guidance(uncond_logits: torch.Tensor, cond_logits: torch.Tensor, eta: float) -> torch.Tensor:
    """log q: the log-distribution that guidance scale −η gives, from the base's logits (B, N, V)."""
    return torch.log_softmax((uncond_logits - eta * (cond_logits - uncond_logits)).float(), -1)


def esd_tokens(generator, spec: ConceptSpec, cfg: ESDTokensConfig, checkpointing: Checkpointing | None = None,
               show_progress: bool = True) -> Trace:
    base = generator.frozen_copy()
    c = generator.encode(spec.target_prompts)
    uncond = generator.unconditional(c)
    params = trainable(generator, cfg.group)

    def step(k: int):
        rng = np.random.default_rng(parallel.step_key(cfg.seed, k))
        i = int(rng.integers(len(c)))
        r = generator.sample_seeds(c[i:i + 1], [rng.integers(2**31)], cfg.guidance)
        with torch.no_grad():
            both = base.image_logits(TokenConditioning.cat([c[i:i + 1], uncond[i:i + 1]]), torch.cat([r, r]))
            log_q = negative_guidance(both[1:], both[:1], cfg.eta)
        loss = code_kl(log_q, generator.image_logits(c[i:i + 1], r))
        return loss, {"esd": loss.item()}

    return finetune(params, step, cfg.iterations, cfg.lr, label="esd-ar", checkpointing=checkpointing,
                    show_progress=show_progress)
