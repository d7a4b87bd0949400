"""AdvUnlearn: the inner attack finds what the erasure missed; the outer step trains the text encoder only."""

import torch
import torch.nn.functional as F

from score_erasure.backends import denoiser_for
from score_erasure.methods import get_method
from score_erasure.methods.advunlearn import inner_attack
from score_erasure.prompting.optimise import initial_vectors
from score_erasure.prompting.tokens import token_prompt
from score_erasure.testing import FAST_CONFIGS as FAST
from score_erasure.testing import tiny_sd_pipeline


def test_the_inner_attack_lowers_its_objective_and_touches_no_weight(pipe):
    denoiser = denoiser_for(pipe)
    prompt = token_prompt(denoiser, [1, "a star"])
    gen = torch.Generator().manual_seed(0)
    z_t = denoiser.noise(1, gen)
    t = denoiser.timesteps(5)[2]
    with torch.no_grad():  # what the base predicts for the plain prompt: what the attack steers towards
        e_0 = denoiser.predict(z_t, t, denoiser.encode(["a star"]))
    weights = {k: v.detach().clone() for k, v in denoiser.text_encoder.named_parameters()}

    def objective(v):
        with torch.no_grad():
            return F.mse_loss(denoiser.predict(z_t, t, prompt.condition(denoiser, v)), e_0).item()

    start = initial_vectors(denoiser, "dog", 1)
    found = inner_attack(denoiser, prompt, start, lambda: (z_t, t, e_0), steps=20, lr=0.1)
    assert objective(found) < objective(start)
    assert all(torch.equal(v, weights[k]) for k, v in denoiser.text_encoder.named_parameters())


def test_warmup_alone_is_esd_on_the_encoder_and_the_adversary_changes_the_run(spec):
    method = get_method("advunlearn")
    runs = {}
    for warmup in (2, 1):  # 2 of 2 steps without the adversary, then one with it
        denoiser = denoiser_for(tiny_sd_pipeline(0))
        trace = method.fit(denoiser, spec, method.config({**FAST["advunlearn"], "warmup": warmup}),
                           show_progress=False)
        runs[warmup] = (trace.series("adversarial"), {k: v.detach().clone()
                                                      for k, v in denoiser.text_encoder.named_parameters()})
    assert runs[2][0] == [0.0, 0.0] and runs[1][0] == [0.0, 1.0]
    assert any(not torch.equal(v, runs[1][1][k]) for k, v in runs[2][1].items())
