"""Every backend on tiny random pipelines of its family (SD, SDXL, FLUX with one encoder or CLIP + T5, with and
without the guidance embedding): the Denoiser draws exactly what the pipeline draws, conditionings round-trip,
and every method and attack runs through it unchanged."""

import pytest
import torch

from score_erasure.attacks import ATTACKS, AttackContext, get_attack
from score_erasure.backends import denoiser_for
from score_erasure.backends.base import resolution
from score_erasure.errors import UserError
from score_erasure.evaluation.judges import load_judge
from score_erasure.evaluation.protocol import Protocol
from score_erasure.generate import generate
from score_erasure.methods import METHODS, get_method
from score_erasure.spec import ConceptSpec
from score_erasure.testing import (
    FAST_ATTACK_CONFIGS,
    FAST_CONFIGS,
    small_protocol_data,
    snapshot_changes,
    tiny_flux_pipeline,
    tiny_sd_pipeline,
    tiny_sdxl_pipeline,
)

BUILDERS = {
    "sd": lambda seed: tiny_sd_pipeline(seed),
    "sd2": lambda seed: tiny_sd_pipeline(seed, prediction_type="v_prediction"),  # SD2.x predicts v
    "sdxl": lambda seed: tiny_sdxl_pipeline(seed),
    "flux": lambda seed: tiny_flux_pipeline(seed),
    "flux-distilled": lambda seed: tiny_flux_pipeline(seed, guidance_embeds=True),
    "flux-clip+t5": lambda seed: tiny_flux_pipeline(seed, encoders="clip+t5"),
    "flux-clip+t5-distilled": lambda seed: tiny_flux_pipeline(seed, guidance_embeds=True, encoders="clip+t5"),
}
FAMILIES = ["sdxl", "flux"]  # one of each family for the attack runs (SD1.x: tests/attacks)
METHOD_FAMILIES = ["sd2", "sdxl", "flux"]  # each method one short run on each (SD1.x: tests/methods)
SPEC = ConceptSpec(concepts=["star"], target_prompts=["a star", "a picture of a star"],
                   anchor_prompts=["a shape", "a picture of a shape"], retain_prompts=["a circle", "a square"])


@pytest.fixture(scope="module", params=list(BUILDERS))
def pipe(request):
    return BUILDERS[request.param](0)


def test_the_denoiser_draws_exactly_what_the_pipeline_draws(pipe):
    denoiser = denoiser_for(pipe)
    assert resolution(pipe) == (32, 32)
    prompts = ["a red star", "a blue circle"]
    images = generate(pipe, prompts, [3], steps=3, guidance=2.5, show_progress=False)[:, 0]
    noise = torch.cat([denoiser.noise(1, torch.Generator().manual_seed(3)) for _ in prompts])
    x0 = denoiser.sample(denoiser.encode(prompts), 3, guidance=2.5, x=noise)
    ours = (denoiser.decode(x0).permute(0, 2, 3, 1) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    assert (images == ours).all()


def test_generation_from_a_conditioning_equals_generation_from_its_prompt(pipe):
    denoiser = denoiser_for(pipe)
    by_text = generate(pipe, ["a red star"], [0], steps=2, show_progress=False)
    by_cond = generate(pipe, ["label"], [0], steps=2, show_progress=False,
                       prompt_embeds=denoiser.encode(["a red star"]))
    assert (by_text == by_cond).all()


def test_conditioning_follows_the_given_input_embeddings_with_gradient(pipe):
    """The optimised vectors are what the encoder reads (T5 looks up a tied copy of its table, not the table)."""
    denoiser = denoiser_for(pipe)
    tokens = denoiser.tokenizer(["a red star"], padding="max_length", max_length=denoiser.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
    embeds = denoiser.text_encoder.get_input_embeddings()(tokens.input_ids).detach().requires_grad_(True)
    cond = denoiser.encode_embeddings(tokens.input_ids, embeds, tokens.attention_mask)
    (grad,) = torch.autograd.grad(cond.sum(), [embeds])
    assert grad[0, 1].abs().sum() > 0  # the first word's vector reaches the conditioning
    moved = denoiser.encode_embeddings(tokens.input_ids, embeds.detach() + 1.0, tokens.attention_mask)
    assert not torch.allclose(moved, cond)


def test_conditioning_from_the_embedding_table_equals_encode(pipe):
    denoiser = denoiser_for(pipe)
    tokens = denoiser.tokenizer(["a red star"], padding="max_length", max_length=denoiser.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
    table = denoiser.text_encoder.get_input_embeddings()
    cond = denoiser.encode_embeddings(tokens.input_ids, table(tokens.input_ids), tokens.attention_mask)
    torch.testing.assert_close(cond, denoiser.encode(["a red star"]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", METHOD_FAMILIES)
@pytest.mark.parametrize("name", [m.name for m in METHODS.values() if m.edits_weights])
def test_every_weight_method_runs_and_stays_in_its_group(name, family):
    denoiser, method = denoiser_for(BUILDERS[family](0)), get_method(name)
    cfg = method.config(FAST_CONFIGS[name])
    if denoiser.family not in method.families:  # a clear one-line refusal instead
        with pytest.raises(UserError, match=f"'{name}' does not run on {denoiser.family.upper()} models"):
            method.check_supports(denoiser)
        return
    _, changed = snapshot_changes(denoiser, method, lambda: method.fit(denoiser, SPEC, cfg, show_progress=False))
    assert changed and changed <= method.may_change(denoiser, cfg)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", [m.name for m in METHODS.values() if not m.edits_weights])
def test_an_inference_time_method_edits_what_the_pipeline_draws_for_the_concept(name, family):
    pipe = BUILDERS[family](0)
    before = generate(pipe, ["a star"], [0, 1], steps=3, show_progress=False)
    method = get_method(name)
    if family not in method.families:
        return  # the refusal is tested with the weight methods'
    overrides = {"bias": 10.0} if name == "semantic-surgery" else FAST_CONFIGS[name] if name == "dumo" else {}
    method.fit(denoiser_for(pipe), SPEC, method.config(overrides), show_progress=False)
    assert not (before == generate(pipe, ["a star"], [0, 1], steps=3, show_progress=False)).all()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", list(ATTACKS))
def test_every_attack_runs(name, family):
    protocol = Protocol.model_validate(small_protocol_data("object", "star"))
    groups = protocol.prompts("star")
    ctx = AttackContext(denoiser_for(BUILDERS[family](0)), denoiser_for(BUILDERS[family](1)),
                        load_judge(protocol.judge), protocol.concept("star").detect, protocol.sampling, SPEC,
                        groups["target"], groups["generality"], ["a striped red pentagram"])
    attack = get_attack(name)
    cfg = attack.config(FAST_ATTACK_CONFIGS[name])
    found = attack.run(ctx, attack.prompts(ctx, cfg)[0], 0, cfg)
    cond = found.condition(ctx.denoiser)
    assert cond.shape == ctx.denoiser.encode(["a star"]).shape and torch.isfinite(cond).all()
