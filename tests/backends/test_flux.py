"""The FLUX backend on tiny random FLUX-architecture pipelines (one encoder, and diffusers' CLIP + T5 pipeline;
with and without the guidance embedding): it draws exactly what the pipeline draws, its flow algebra holds,
and every method and attack runs through it unchanged."""

import re

import pytest
import torch

from score_erasure.attacks import ATTACKS, AttackContext, get_attack
from score_erasure.backends import denoiser_for
from score_erasure.backends.flux import FluxDenoiser
from score_erasure.errors import UserError
from score_erasure.evaluation.judges import load_judge
from score_erasure.evaluation.protocol import Protocol
from score_erasure.generate import generate
from score_erasure.methods import METHODS, get_method
from score_erasure.models import load_pipeline, resolution
from score_erasure.spec import ConceptSpec
from score_erasure.testing import FAST_ATTACK_CONFIGS, FAST_CONFIGS, small_protocol_data, tiny_flux_pipeline

VARIANTS = [("single", False), ("single", True), ("clip+t5", False), ("clip+t5", True)]
SPEC = ConceptSpec(concepts=["star"], target_prompts=["a star", "a picture of a star"],
                   anchor_prompts=["a shape", "a picture of a shape"], retain_prompts=["a circle", "a square"])


@pytest.fixture(scope="module", params=VARIANTS, ids=lambda v: f"{v[0]}{'-distilled' if v[1] else ''}")
def flux(request):
    encoders, distilled = request.param
    return tiny_flux_pipeline(0, guidance_embeds=distilled, encoders=encoders)


def test_the_denoiser_draws_exactly_what_the_pipeline_draws(flux):
    denoiser = denoiser_for(flux)
    assert isinstance(denoiser, FluxDenoiser) and resolution(flux) == (32, 32)
    prompts = ["a red star", "a blue circle"]
    images = generate(flux, prompts, [3], steps=3, guidance=2.5, show_progress=False)[:, 0]
    noise = torch.cat([denoiser.noise(1, torch.Generator().manual_seed(3)) for _ in prompts])
    x0 = denoiser.sample(denoiser.encode(prompts), 3, guidance=2.5, x=noise)
    ours = (denoiser.decode(x0).permute(0, 2, 3, 1) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    assert (images == ours).all()


def test_generation_from_a_conditioning_equals_generation_from_its_prompt(flux):
    denoiser = denoiser_for(flux)
    by_text = generate(flux, ["a red star"], [0], steps=2, show_progress=False)
    by_cond = generate(flux, ["label"], [0], steps=2, show_progress=False,
                       prompt_embeds=denoiser.encode(["a red star"]))
    assert (by_text == by_cond).all()


def test_flow_algebra_and_partial_sampling(flux):
    denoiser = denoiser_for(flux)
    x0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = denoiser.timesteps(4)[1:3]
    x_t = denoiser.add_noise(x0, eps, t)
    assert torch.allclose(denoiser.clean_estimate(x_t, t, denoiser.target(x0, eps, t)), x0, atol=1e-6)
    cond = denoiser.encode(["a star"])
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    whole = denoiser.sample(cond, 4, generator=gen())
    halves = denoiser.sample(cond, 4, x=denoiser.sample(cond, 4, until=2, generator=gen()), start=2)
    assert torch.allclose(whole, halves, atol=1e-6)


def test_conditioning_from_the_embedding_table_equals_encode(flux):
    denoiser = denoiser_for(flux)
    tokens = denoiser.tokenizer(["a red star"], padding="max_length", max_length=denoiser.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
    table = denoiser.text_encoder.get_input_embeddings()
    cond = denoiser.encode_embeddings(tokens.input_ids, table(tokens.input_ids), tokens.attention_mask)
    assert torch.allclose(cond, denoiser.encode(["a red star"]), atol=1e-5)


def test_parameter_groups_are_the_text_stream_of_the_double_blocks(flux):
    denoiser = denoiser_for(flux)
    kv, xattn = denoiser.parameters("xattn-kv"), denoiser.parameters("xattn")
    assert kv and all(re.match(r"transformer_blocks\.\d+\.attn\.add_[kv]_proj\.", k) for k in kv)
    assert set(kv) < set(xattn) and not any(k.startswith("single_") for k in xattn)
    assert set(denoiser.parameters("non-xattn")) == set(denoiser.parameters("full")) - set(xattn)


@pytest.mark.parametrize("name", [m.name for m in METHODS.values() if m.edits_weights])
def test_every_weight_method_runs_on_flux_and_stays_in_its_group(name):
    pipe = tiny_flux_pipeline(0)
    denoiser, method = denoiser_for(pipe), get_method(name)
    cfg = method.config(FAST_CONFIGS[name])
    before = {k: v.detach().clone() for k, v in denoiser.network.named_parameters()}
    method.fit(denoiser, SPEC, cfg, show_progress=False)
    changed = {k for k, v in denoiser.network.named_parameters() if not torch.equal(v, before[k])}
    assert changed and changed <= set(denoiser.parameters(cfg.group))


def test_dve_edits_what_the_flux_pipeline_draws_for_the_concept():
    pipe = tiny_flux_pipeline(0)
    before = generate(pipe, ["a star"], [0, 1], steps=3, show_progress=False)
    get_method("dve").fit(denoiser_for(pipe), SPEC, get_method("dve").config())
    after = generate(pipe, ["a star"], [0, 1], steps=3, show_progress=False)
    assert not (before == after).all()


def test_uce_on_flux_maps_what_each_text_projection_reads_for_the_concept_onto_the_anchor():
    from score_erasure.methods.uce import last_positions, layer_inputs, pair_rows

    denoiser = denoiser_for(tiny_flux_pipeline(0))
    cfg = get_method("uce").config({"samples": 2})
    weights = {k.removesuffix(".weight"): v.detach().clone() for k, v in denoiser.parameters("xattn-kv").items()
               if v.ndim == 2}
    sets = [SPEC.target_prompts, SPEC.anchor_prompts]
    inputs = layer_inputs(denoiser, list(weights), sets, cfg)
    last = [last_positions(denoiser, p).repeat(cfg.samples) for p in sets]
    get_method("uce").fit(denoiser, SPEC, cfg)
    edited = {k.removesuffix(".weight"): v for k, v in denoiser.parameters("xattn-kv").items()}
    for name, W in weights.items():
        c, c_star = pair_rows(inputs[name][0], last[0], inputs[name][1], last[1], cfg.tokens)
        assert c.shape[0] == 2 * len(sets[0]) * 16  # samples x prompts x text tokens (equal lengths: all positions)
        before, after = (W @ c.T - W @ c_star.T).norm(), (edited[name] @ c.T - W @ c_star.T).norm()
        assert after < 0.5 * before, name


@pytest.mark.parametrize("name", list(ATTACKS))
def test_every_attack_runs_on_flux(name):
    protocol = Protocol.model_validate(small_protocol_data("object", "star"))
    groups = protocol.prompts("star")
    ctx = AttackContext(denoiser_for(tiny_flux_pipeline(0)), denoiser_for(tiny_flux_pipeline(1)),
                        load_judge(protocol.judge), protocol.concept("star").detect, protocol.sampling, SPEC,
                        groups["target"], groups["generality"], ["a striped red pentagram"])
    attack = get_attack(name)
    cfg = attack.config(FAST_ATTACK_CONFIGS[name])
    found = attack.run(ctx, attack.prompts(ctx, cfg)[0], 0, cfg)
    cond = found.condition(ctx.denoiser)
    assert cond.shape == ctx.denoiser.encode(["a star"]).shape and torch.isfinite(cond).all()


def test_a_saved_single_encoder_flux_pipeline_loads_by_path(tmp_path):
    pipe = tiny_flux_pipeline(0)
    pipe.save_pretrained(tmp_path / "flux")
    loaded = load_pipeline(str(tmp_path / "flux"))
    assert type(loaded) is type(pipe) and resolution(loaded) == (32, 32)
    a = generate(pipe, ["a star"], [0], steps=2, show_progress=False)
    assert (a == generate(loaded, ["a star"], [0], steps=2, show_progress=False)).all()
