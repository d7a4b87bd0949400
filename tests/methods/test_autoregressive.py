"""The autoregressive methods (S-VARE, VCE) on a tiny random Janus: their losses on hand-computable cases, a run
changes only the attention and feed-forward weights and lowers its objective, and `score erase` writes a delta
that loads as `--model`; diffusion methods refuse these models and these methods refuse diffusion models."""

import math

import numpy as np
import pytest
import torch

from score_erasure.backends import token_generator_of
from score_erasure.errors import UserError
from score_erasure.generate import generate
from score_erasure.methods import get_method
from score_erasure.methods.esd_tokens import negative_guidance
from score_erasure.methods.s_vare import filtered_cross_entropy, preservation
from score_erasure.methods.vce import dpo_loss
from score_erasure.spec import ConceptSpec
from score_erasure.testing import run_cli, snapshot_changes, tiny_emu3_pipeline, tiny_janus_pipeline, tiny_var_pipeline

SPEC = ConceptSpec(concepts=["star"], target_prompts=["a star", "a red star"],
                   anchor_prompts=["a shape", "a red shape"])


def test_filtered_cross_entropy_skips_codes_already_given_the_safe_value():
    # two codes of a 2-code book, target 0 each: p = 0.9 (kept out: p >= 1/2) and p = 0.2 (ln 5)
    logits = torch.log(torch.tensor([[[0.9, 0.1], [0.2, 0.8]]]))
    loss = filtered_cross_entropy(logits, torch.zeros(1, 2, dtype=torch.long))
    assert loss.item() == pytest.approx(math.log(5) / 2, rel=1e-5)


def test_preservation_is_zero_on_the_base_and_positive_elsewhere():
    logits = torch.randn(2, 3, 5)
    base = torch.log_softmax(logits, -1)
    assert preservation(logits, base).item() == pytest.approx(0, abs=1e-6)
    assert preservation(logits + torch.randn(2, 3, 5), base).item() > 0


def test_dpo_loss_is_ln2_at_the_reference_and_ignores_dropped_codes():
    ref_w, ref_l = torch.randn(2, 4), torch.randn(2, 4)
    keep = torch.tensor([[True, True, False, True]] * 2)
    assert dpo_loss(ref_w, ref_l, ref_w, ref_l, keep, 0.1).item() == pytest.approx(math.log(2), rel=1e-6)
    # preferring y_w more lowers the loss; a dropped code's log-probability changes nothing
    better = ref_w + 1.0
    assert dpo_loss(better, ref_l, ref_w, ref_l, keep, 0.1) < math.log(2)
    dropped = better.clone()
    dropped[:, 2] -= 50
    assert dpo_loss(dropped, ref_l, ref_w, ref_l, keep, 0.1).item() == pytest.approx(
        dpo_loss(better, ref_l, ref_w, ref_l, keep, 0.1).item(), rel=1e-6)


def test_negative_guidance_is_the_distribution_guidance_minus_eta_samples():
    uncond, cond = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    assert torch.allclose(negative_guidance(uncond, cond, 0.0), torch.log_softmax(uncond, -1))
    assert torch.allclose(negative_guidance(uncond, cond, 1.0), torch.log_softmax(2 * uncond - cond, -1), atol=1e-6)
    # a code the concept raises by 3 nats against the unconditional falls by 3 eta against every other code
    cond = uncond.clone()
    cond[..., 0] += 3
    log_q = negative_guidance(uncond, cond, 0.5)
    assert torch.allclose(log_q[..., 0] - log_q[..., 1], uncond[..., 0] - uncond[..., 1] - 1.5, atol=1e-5)


RUNS = {"s-vare": ("fce", {"batch": 4, "sequences_per_prompt": 4}),
        "vce": ("dpo", {"batch": 4, "pairs_per_prompt": 4}),
        "esd-ar": ("esd", {}),
        "score-ar": ("erase", {"d_pretrain": 2, "sequences_per_prompt": 2})}


@pytest.mark.parametrize("family", [tiny_janus_pipeline, tiny_var_pipeline, tiny_emu3_pipeline])
@pytest.mark.parametrize("name", list(RUNS))
def test_a_run_lowers_its_objective_and_changes_only_attention_and_ffn(name, family):
    generator, method = token_generator_of(family(0)), get_method(name)
    term, overrides = RUNS[name]
    cfg = method.config({"iterations": 12, "lr": 3e-3, **overrides})
    runs = {}
    _, changed = snapshot_changes(generator, method, lambda: runs.setdefault(
        "trace", method.fit(generator, SPEC, cfg, show_progress=False)))
    assert changed and changed <= method.may_change(generator, cfg)
    assert changed <= set(generator.parameters("attention+ffn"))
    series = runs["trace"].series(term)
    assert np.mean(series[-3:]) < np.mean(series[:3]), series


def test_score_erase_writes_a_delta_that_loads_as_a_model(tmp_path, capsys, monkeypatch):
    pipe = tiny_janus_pipeline(0)
    pipe.save_pretrained(tmp_path / "janus")
    before = generate(pipe, ["a star"], [0, 1], show_progress=False)
    code, _, err = run_cli(capsys, monkeypatch, "erase", "--model", tmp_path / "janus", "--method", "s-vare",
                           "-c", "star", "--config", _config(tmp_path, "iterations = 5\nlr = 1e-2\n"),
                           "--out", tmp_path / "erased")
    assert code == 0, err
    from score_erasure.models import load_pipeline

    after = generate(load_pipeline(str(tmp_path / "erased")), ["a star"], [0, 1], show_progress=False)
    assert not np.array_equal(before, after)
    code, _, err = run_cli(capsys, monkeypatch, "erase", "--model", tmp_path / "janus", "--method", "esd-u",
                           "-c", "star", "--out", tmp_path / "refused")
    assert code != 0 and "'esd-u' does not run on JANUS models" in err


def _config(tmp_path, text: str):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_token_methods_refuse_diffusion_models(pipe):
    from score_erasure.backends import denoiser_for

    for name in RUNS:
        with pytest.raises(UserError, match=f"'{name}' does not run on SD models"):
            get_method(name).check_supports(denoiser_for(pipe))


@pytest.mark.parametrize("concept", ["star", "red", "striped", "fire", "Zorblat"])
def test_the_renderer_draws_each_scene_with_and_without_the_concept(concept):
    from score_erasure.toyworld.judge import WorldJudge
    from score_erasure.toyworld.specs import contrastive_renders

    shown, hidden = contrastive_renders(concept, 16, seed=0)
    assert shown.shape == hidden.shape == (16, 32, 32, 3)
    assert all((a != b).any() for a, b in zip(shown, hidden, strict=True))
    judge = WorldJudge.load()
    family = {"star": "shape", "red": "colour", "striped": "style", "fire": "fire", "Zorblat": "character"}[concept]
    assert judge.judge(shown).has(family, concept).all() and not judge.judge(hidden).has(family, concept).any()


def test_vce_takes_its_pairs_from_the_renderer_on_the_worlds_concepts():
    from score_erasure.methods.vce import rendered_pairs
    from score_erasure.toyworld.specs import world_spec

    generator, method = token_generator_of(tiny_janus_pipeline(0)), get_method("vce")
    spec = world_spec("fire")
    prompts, y_w, y_l = rendered_pairs(generator, spec, method.config({"pairs_per_prompt": 2}))
    assert prompts == [p for p in spec.target_prompts for _ in range(2)]
    assert y_w.shape == y_l.shape == (len(prompts), generator.num_image_tokens) and not torch.equal(y_w, y_l)
    with pytest.raises(UserError, match="needs the embedded world's concepts"):
        method.fit(generator, SPEC, method.config({"pairs": "renderer"}), show_progress=False)


def test_score_ar_contrasts_prompts_of_different_lengths():
    """A concept prompt and its anchor need not tokenise to the same length ("a circle on fire", "a circle")."""
    from score_erasure.toyworld.specs import world_spec

    generator, method = token_generator_of(tiny_janus_pipeline(0)), get_method("score-ar")
    trace = method.fit(generator, world_spec("fire"), method.config(method.smoke), show_progress=False)
    assert len(trace.series("erase")) == method.smoke["iterations"]
