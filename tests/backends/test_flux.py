"""What is particular to the FLUX backend (the shared behaviours are in test_backends.py): flow algebra,
parameter groups, UCE on the text stream, saved single-encoder pipelines."""

import re

import pytest
import torch

from score_erasure.backends import denoiser_for
from score_erasure.backends.base import resolution
from score_erasure.generate import generate
from score_erasure.methods import get_method
from score_erasure.models import load_pipeline
from score_erasure.spec import ConceptSpec
from score_erasure.testing import tiny_flux_pipeline

VARIANTS = [("single", False), ("single", True), ("clip+t5", False), ("clip+t5", True)]
SPEC = ConceptSpec(concepts=["star"], target_prompts=["a star", "a picture of a star"],
                   anchor_prompts=["a shape", "a picture of a shape"], retain_prompts=["a circle", "a square"])


@pytest.fixture(scope="module", params=VARIANTS, ids=lambda v: f"{v[0]}{'-distilled' if v[1] else ''}")
def flux(request):
    encoders, distilled = request.param
    return tiny_flux_pipeline(0, guidance_embeds=distilled, encoders=encoders)


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


def test_parameter_groups_are_the_text_stream_of_the_double_blocks(flux):
    denoiser = denoiser_for(flux)
    kv, xattn = denoiser.parameters("xattn-kv"), denoiser.parameters("xattn")
    assert kv and all(re.match(r"transformer_blocks\.\d+\.attn\.add_[kv]_proj\.", k) for k in kv)
    assert set(kv) < set(xattn) and not any(k.startswith("single_") for k in xattn)
    assert set(denoiser.parameters("non-xattn")) == set(denoiser.parameters("full")) - set(xattn)
    assert set(denoiser.parameters("inputs")) == {"context_embedder.weight",
                                                  "time_text_embed.text_embedder.linear_1.weight"}


def test_uce_on_flux_maps_the_concept_onto_the_anchor_where_the_conditioning_enters(flux):
    """The default group: the token states' and the pooled vector's input projections, nothing else, each
    solved on the rows of what it reads, and brought closer to reading the concept as its anchor."""
    from score_erasure.methods.uce import conditioning_rows, uce_weight

    denoiser = denoiser_for(flux)
    cfg = get_method("uce").config()
    before = {k: v.detach().clone() for k, v in denoiser.network.named_parameters()}
    get_method("uce").fit(denoiser, SPEC, cfg)
    after = dict(denoiser.network.named_parameters())
    assert {k for k, v in after.items() if not torch.equal(v, before[k])} == set(denoiser.parameters("inputs"))
    for name, reads in denoiser.conditioning_readers().items():
        rows = conditioning_rows(denoiser, SPEC, cfg, reads)
        torch.testing.assert_close(after[name], uce_weight(before[name], *rows, cfg))
        c, c_star, _ = rows
        assert c.shape[0] == (2 if reads == "pooled" else 2 * 16)  # prompts (x tokens: equal lengths, all positions)
        W = before[name]
        assert (after[name] @ c.T - W @ c_star.T).norm() < (W @ c.T - W @ c_star.T).norm(), name


def test_uce_on_flux_maps_what_each_text_projection_reads_for_the_concept_onto_the_anchor():
    from score_erasure.methods.uce import last_positions, layer_inputs, pair_rows

    denoiser = denoiser_for(tiny_flux_pipeline(0))
    cfg = get_method("uce").config({"group": "xattn-kv", "samples": 2})
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


def test_a_saved_single_encoder_flux_pipeline_loads_by_path(tmp_path):
    pipe = tiny_flux_pipeline(0)
    pipe.save_pretrained(tmp_path / "flux")
    loaded = load_pipeline(str(tmp_path / "flux"))
    assert type(loaded) is type(pipe) and resolution(loaded) == (32, 32)
    a = generate(pipe, ["a star"], [0], steps=2, show_progress=False)
    assert (a == generate(loaded, ["a star"], [0], steps=2, show_progress=False)).all()


def test_erase_attack_evaluate_and_certify_run_unchanged_on_saved_flux_models(tmp_path):
    """The whole chain through files, on FLUX: erase (a delta on the transformer), attack the erased model,
    evaluate it against its base, certify it with the attack's finds."""
    import json

    from score_erasure.jobs.attack import run_attack
    from score_erasure.jobs.certify import certify
    from score_erasure.jobs.erase import erase
    from score_erasure.jobs.evaluate import evaluate
    from score_erasure.testing import FAST_CONFIGS, small_protocol_data

    base = tmp_path / "flux"
    tiny_flux_pipeline(0).save_pretrained(base)
    protocol = tmp_path / "object-star.json"
    protocol.write_text(json.dumps(small_protocol_data("object", "star")))
    delta = erase(str(base), "esd-x", SPEC, tmp_path / "erased", FAST_CONFIGS["esd-x"], show_progress=False)
    assert delta.network == "transformer" and all("add_" in k or "to_add_out" in k or "norm_added" in k
                                                  for k in delta.tensors)
    erased = str(tmp_path / "erased")
    attack = run_attack(erased, "inversion", "star", tmp_path / "attack", base=str(base), protocol_path=protocol,
                        overrides={"iterations": 2, "target_images": 1, "batch": 1}, use_cache=False,
                        show_progress=False)
    report = evaluate(erased, "star", tmp_path / "eval", base=str(base), protocol_path=protocol, use_cache=False,
                      show_progress=False)
    certificate = certify(erased, "star", tmp_path / "cert", base=str(base), protocol_path=protocol,
                          attack_folders=[tmp_path / "attack"], overrides={"n": 16, "folds": 2})
    assert 0 <= attack.asr.value <= 1 and "acc_e" in report.metrics and report.model_hash != report.base_hash
    assert 0 <= certificate.mi_nats.value <= 0.7 and "<S*> a star" in certificate.concept_prompts
