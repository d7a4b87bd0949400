"""Every method on a tiny random pipeline: it runs, and it changes only the parameters it claims."""

import re

import pytest
import torch

from score_erasure.backends import denoiser_for
from score_erasure.errors import UserError
from score_erasure.methods import METHODS, get_method
from score_erasure.spec import ConceptSpec
from score_erasure.testing import FAST_CONFIGS as FAST
from score_erasure.testing import snapshot_changes


def _changed(before, network):
    return {k for k, v in network.named_parameters() if not torch.equal(v, before[k])}


@pytest.mark.parametrize("name", [m.name for m in METHODS.values() if m.edits_weights])
def test_method_changes_only_its_group(name, pipe, spec):
    method = get_method(name)
    cfg = method.config(FAST[name])
    denoiser = denoiser_for(pipe)
    if denoiser.family not in method.families:  # FLUX-only: its run is in tests/backends
        with pytest.raises(UserError, match="does not run on SD models"):
            method.check_supports(denoiser)
        return
    before, changed = snapshot_changes(denoiser, method, lambda: method.fit(denoiser, spec, cfg, show_progress=False))
    assert changed, f"{name} changed nothing"
    allowed = method.may_change(denoiser, cfg)
    assert changed <= allowed, sorted(changed - allowed)[:3]
    if method.edits_text_encoder:  # the network as it was; the encoder's token and position tables too
        assert not any(k in dict(denoiser.network.named_parameters()) for k in changed)
        assert not any(re.search(r"(word|position|token_type)_embeddings", k) for k in changed)
        assert any(re.search(r"encoder\.layer\.", k) for k in changed)
    if name == "esd-x":
        assert all(re.search(r"attn2\.", k) for k in changed)
    if name == "esd-u":
        assert not any(re.search(r"attn2\.", k) for k in changed)
    if name == "esd":  # LoRA adapters merged back: the plain layer names, only the text attention's weights
        assert all(re.search(r"attn2\.to_(q|k|v|out\.0)\.weight$", k) for k in changed)
        assert not any("lora" in k or "base_layer" in k for k, _ in denoiser.network.named_parameters())
    if name == "uce":
        assert all(re.search(r"attn2\.to_[kv]\.weight", k) for k in changed)
    if name == "trce":  # stage 1 on the K/V, stage 2 on the self-attention and the queries
        assert any(re.search(r"attn2\.to_[kv]\.weight", k) for k in changed)
        assert any(re.search(r"attn1\.", k) for k in changed)


def test_score_reports_the_mi_estimate_and_saliency(pipe, spec):
    method = get_method("score")
    trace = method.fit(denoiser_for(pipe), spec, method.config(FAST["score"]), show_progress=False)
    mi = trace.series("mi")
    assert len(mi) == 2 and all(-5 < v <= 0.7 for v in mi)  # log 2 − BCE ≤ log 2
    assert 0 < trace.info["saliency_kept"] < 1


def test_saliency_mask_confines_score_updates(pipe, spec):
    method = get_method("score")
    cfg = method.config({**FAST["score"], "saliency_keep": 0.05})
    denoiser = denoiser_for(pipe)
    before = {k: v.detach().clone() for k, v in denoiser.network.named_parameters()}
    trace = method.fit(denoiser, spec, cfg, show_progress=False)
    moved = sum(int((v != before[k]).sum()) for k, v in denoiser.network.named_parameters())
    total = sum(v.numel() for v in before.values())
    assert moved / total <= trace.info["saliency_kept"] + 1e-9


def test_score_builds_its_saliency_mask_from_every_concepts_prompts(pipe, spec):
    from score_erasure.methods.score import ScoreTraining, score
    from score_erasure.spec import combine_specs

    asked = []

    class Recording(ScoreTraining):
        def saliency_gradients(self, params, prompts):
            asked.append(list(prompts))
            return super().saliency_gradients(params, prompts)

    other = ConceptSpec(concepts=["heart"], target_prompts=["a heart", "a picture of a heart"],
                        anchor_prompts=["a shape", "a picture of a shape"])
    cfg = get_method("score").config(FAST["score"])  # saliency_prompts 1
    score(denoiser_for(pipe), combine_specs([spec, other]), cfg, show_progress=False, training=Recording)
    assert asked == [[0], [2]]  # the first prompt of each concept, not the first concept's alone


def test_score_gives_each_concept_its_own_iterations(pipe, spec):
    from score_erasure.methods.score import score
    from score_erasure.spec import combine_specs

    other = ConceptSpec(concepts=["heart"], target_prompts=["a heart"], anchor_prompts=["a shape"])
    cfg = get_method("score").config(FAST["score"])  # iterations 2
    assert cfg.iterations_per_concept and not get_method("ant").config().iterations_per_concept
    steps = {per: len(score(denoiser_for(pipe), combine_specs([spec, other]),
                            cfg.model_copy(update={"iterations_per_concept": per}), show_progress=False).rows)
             for per in (True, False)}
    assert steps == {True: 4, False: 2}
    assert len(score(denoiser_for(pipe), spec, cfg, show_progress=False).rows) == 2  # one concept: as before


def test_ant_is_score_without_the_adversary():
    assert get_method("ant").config().adversarial is False
    assert get_method("score").config().adversarial is True
    assert get_method("ant").fit is get_method("score").fit
    # score's preservation is its own (and FADE's, its other name); ANT, TRACE and score-robust keep the plain one
    assert get_method("score").config().pres_anchors and get_method("fade").config() == get_method("score").config()
    assert not any(get_method(m).config().pres_anchors for m in ("ant", "trace", "score-robust"))


def test_same_seed_same_delta(spec):
    from score_erasure.testing import tiny_sd_pipeline

    results = []
    for global_seed in range(2):  # whatever the caller's global RNG state: only the config's seed counts
        pipe = tiny_sd_pipeline(0)
        torch.manual_seed(global_seed)
        denoiser = denoiser_for(pipe)
        method = get_method("score")
        method.fit(denoiser, spec, method.config(FAST["score"]), show_progress=False)
        results.append({k: v.detach().clone() for k, v in denoiser.network.named_parameters()})
    for k in results[0]:
        torch.testing.assert_close(results[0][k], results[1][k], rtol=0, atol=0)


def test_unknown_method_lists_the_valid_ones():
    names = ("score, ant, fade, esd-x, esd-u, esd, eraseanything, sdd, salun, advunlearn, uce, mace, rece, trce, "
             "trace, score-robust, dumo, dve, semantic-surgery, cgce")
    with pytest.raises(UserError, match=f"choose one of: {names}"):
        get_method("esdx")


def test_invalid_config_is_a_user_error():
    with pytest.raises(UserError, match="invalid esd-x config: iterations"):
        get_method("esd-x").config({"iterations": "many"})


def test_score_reference_is_the_matched_anchor_or_empty(pipe, spec):
    from score_erasure.methods.score import ScoreTraining

    denoiser = denoiser_for(pipe)
    cfg = get_method("score").config({**FAST["score"], "reference": "anchor"})
    run = ScoreTraining(denoiser, spec, cfg)
    torch.testing.assert_close(run.reference(1), denoiser.encode(["a picture of a shape"]))
    torch.testing.assert_close(run.reference(5), run.uncond)  # beyond the spec's targets: no anchor, so ∅
    run = ScoreTraining(denoiser, spec, cfg.model_copy(update={"reference": "empty"}))
    torch.testing.assert_close(run.reference(1), run.uncond)


def test_score_preserves_the_anchors_images_only_when_asked(pipe, spec, monkeypatch):
    from score_erasure.methods.score import ScoreTraining

    denoiser = denoiser_for(pipe)
    cfg = get_method("score").config({**FAST["score"], "pres_anchors": False, "pres_batch": 1})
    plain = ScoreTraining(denoiser, spec, cfg)
    assert len(plain.c_r) == len(dict.fromkeys(spec.retain_prompts)) == len(plain.bank_r[0])
    run = ScoreTraining(denoiser, spec, cfg.model_copy(update={"pres_anchors": True, "pres_batch": 3}))
    torch.testing.assert_close(run.c_r, denoiser.encode(list(dict.fromkeys([*spec.retain_prompts,
                                                                             *spec.anchor_prompts]))))
    assert len(run.bank_r[0]) == len(run.c_r)
    seen = []
    monkeypatch.setattr(run, "_noised", lambda bank, idx, t, gen: seen.append(len(idx)) or
                        ScoreTraining._noised(run, bank, idx, t, gen))
    loss, _ = run.step(0)
    assert torch.isfinite(loss) and seen == [3]


def test_score_without_an_early_stage_has_no_early_term(pipe, spec):
    method = get_method("score")
    trace = method.fit(denoiser_for(pipe), spec, method.config({**FAST["score"], "early_fraction": 0.0}),
                       show_progress=False)
    assert trace.series("early") == [0.0, 0.0] and all(v > 0 for v in trace.series("late"))


def test_dve_removes_the_positive_component_along_the_concept_direction(pipe, spec):
    denoiser = denoiser_for(pipe)
    x, t = torch.randn(3, 4, 8, 8), denoiser.timesteps(4)[1]
    cond = denoiser.encode(["a star", "a circle", "a picture of a star"])
    plain = denoiser.predict(x, t, cond)
    weights = {k: v.clone() for k, v in denoiser.network.state_dict().items()}
    get_method("dve").fit(denoiser, spec, get_method("dve").config({"pairs": 2}))
    edited = denoiser.predict(x, t, cond)
    assert all(torch.equal(v, denoiser.network.state_dict()[k]) for k, v in weights.items())  # no weight moved
    frozen = denoiser.frozen_copy()  # the copy carries the edit too, without copying the pipeline
    torch.testing.assert_close(frozen.predict(x, t, cond), edited)
    hook = next(iter(frozen.network.__dict__["_score_erasure_hooks"].values()))
    with torch.no_grad():
        hook.inside = True  # the raw network, to rebuild d by hand
        raw = lambda c: frozen.predict(x, t, c.expand(3, *c.shape[1:]))  # noqa: E731
        d = torch.stack([raw(c[None]) - raw(a[None]) for c, a in zip(hook.concept, hook.anchor, strict=True)]).mean(0)
        hook.inside = False
    along = (edited * d).flatten(1).sum(1)
    assert torch.all(along <= 1e-4 * d.flatten(1).norm(dim=1) * edited.flatten(1).norm(dim=1))
    moved = (edited - plain).flatten(1).norm(dim=1)
    assert moved.max() > 0  # some prediction pointed along the concept and was projected


def test_dve_strength_zero_changes_nothing(pipe, spec):
    denoiser = denoiser_for(pipe)
    x, t, cond = torch.randn(2, 4, 8, 8), denoiser.timesteps(4)[0], denoiser.encode(["a star", "a circle"])
    plain = denoiser.predict(x, t, cond)
    get_method("dve").fit(denoiser, spec, get_method("dve").config({"strength": 0.0}))
    torch.testing.assert_close(denoiser.predict(x, t, cond), plain)


def test_semantic_surgery_subtracts_the_concept_direction_only_where_the_gate_opens(pipe, spec):
    """e' = e - ρ (e_c - e_n) on a prompt that carries the concept; unchanged without it, and the unconditional
    row of guidance untouched, in what the network itself receives."""
    from score_erasure.methods.semantic_surgery import presence

    denoiser = denoiser_for(pipe)
    e, n, c = denoiser.encode(["a star", "a circle", ""]), denoiser.encode([""]), denoiser.encode(["star"])
    alpha = presence(e, c - n)[:, 0]
    assert alpha[0] > alpha[1:].max()  # the tiny random encoder still tells these apart
    bias = -float(alpha[0] + alpha[1:].max()) / 2
    method = get_method("semantic-surgery")
    method.fit(denoiser, spec, method.config({"bias": bias}), show_progress=False)
    edited = denoiser.network.__dict__["_score_erasure_hooks"]["semantic-surgery"].edit(e)
    rho = torch.sigmoid((alpha[0] + bias) / 0.02)
    torch.testing.assert_close(edited[0], e[0] - rho * (c[0] - n[0]))
    assert rho >= 0.5 and torch.equal(edited[1], e[1]) and torch.equal(edited[2], e[2])
    seen = {}
    denoiser.network.register_forward_pre_hook(lambda m, a, kw: seen.update(cond=kw["encoder_hidden_states"]),
                                               with_kwargs=True)  # runs after the surgery's own pre-hook
    denoiser.predict(torch.randn(3, 4, 8, 8), denoiser.timesteps(4)[1], e)
    torch.testing.assert_close(seen["cond"], edited)


def test_semantic_surgery_calibrates_the_gate_between_the_two_kinds_of_prompt():
    from score_erasure.methods.semantic_surgery import calibrated_bias

    assert calibrated_bias(torch.tensor([0.5, 0.4]), torch.tensor([0.1, 0.3])) == pytest.approx(-0.35)
    assert calibrated_bias(torch.tensor([0.5, 0.1]), torch.tensor([0.2, 0.4])) == pytest.approx(-0.3)  # overlap: means


def test_semantic_surgery_joins_the_concepts_present_into_one_direction(pipe):
    from score_erasure.spec import ConceptSpec

    spec = ConceptSpec(concepts=["star", "circle"], target_prompts=["a star", "a circle"],
                       anchor_prompts=["a shape", "a shape"], retain_prompts=["a square"])
    denoiser = denoiser_for(pipe)
    method = get_method("semantic-surgery")
    method.fit(denoiser, spec, method.config({"bias": 10.0}), show_progress=False)  # every gate open
    hook = denoiser.network.__dict__["_score_erasure_hooks"]["semantic-surgery"]
    e, n = denoiser.encode(["a square"]), denoiser.encode([""])
    torch.testing.assert_close(hook.edit(e)[0], e[0] - (denoiser.encode(["star, circle"])[0] - n[0]), atol=1e-3,
                               rtol=1e-3)  # ρ = sigmoid(>= 400) = 1


def test_trce_stage_one_moves_the_end_token_onto_its_anchor(pipe, spec):
    """Stage 1 alone (no fine-tune), with little regularisation: only the K/V change, and they now read each
    target prompt's end token as its anchor's."""
    from score_erasure.methods.trce import end_token_rows

    denoiser = denoiser_for(pipe)
    kv = {k: v.detach().clone() for k, v in denoiser.parameters("xattn-kv").items() if v.ndim == 2}
    before = {k: v.detach().clone() for k, v in denoiser.network.named_parameters()}
    rows_t, rows_a = end_token_rows(denoiser, spec.target_prompts), end_token_rows(denoiser, spec.anchor_prompts)
    get_method("trce").fit(denoiser, spec, get_method("trce").config({**FAST["trce"], "iterations": 0, "lamb": 1e-4,
                                                                      "preserve_scale": 0}),
                           show_progress=False)
    assert _changed(before, denoiser.network) == set(kv)
    for name, W in denoiser.parameters("xattn-kv").items():
        if name in kv:
            gap_before = (rows_t @ kv[name].T - rows_a @ kv[name].T).norm()
            assert (rows_t @ W.T - rows_a @ kv[name].T).norm() < 0.05 * gap_before, name


def test_cgce_refines_only_what_its_classifier_flags(pipe, spec):
    """The trained classifier separates the concept's prompts from the others; a flagged conditioning is moved
    until it no longer fires; the others and the unconditional row pass unchanged."""
    denoiser = denoiser_for(pipe)
    method = get_method("cgce")
    trace = method.fit(denoiser, spec, method.config({"train_steps": 200}), show_progress=False)
    assert trace.info["p_named_min"] > 0.5 > trace.info["p_other_max"]
    hook = denoiser.network.__dict__["_score_erasure_hooks"]["cgce"]
    e = denoiser.encode(["a star", "a circle", ""])
    edited = hook.edit(e)
    assert not torch.equal(edited[0], e[0]) and torch.equal(edited[1:], e[1:])
    assert torch.sigmoid(hook.classify(edited[:1])).max() < hook.target
    assert hook.refined == 1


def test_salun_trains_only_the_most_salient_half_of_the_weights(pipe, spec):
    """The mask keeps the top half of |g| ranked over the whole network; no other weight moves."""
    from score_erasure.methods.salun import global_top

    masks = global_top({"a": torch.tensor([1.0, 5.0, 3.0]), "b": torch.tensor([[4.0], [2.0], [6.0]])}, 0.5)
    assert masks["a"].tolist() == [0, 1, 0] and masks["b"].flatten().tolist() == [1, 0, 1]
    denoiser = denoiser_for(pipe)
    before = {k: v.detach().clone() for k, v in denoiser.network.named_parameters()}
    method = get_method("salun")
    trace = method.fit(denoiser, spec, method.config({**FAST["salun"], "lr": 1e-3}), show_progress=False)
    moved = sum(int((v != before[k]).sum()) for k, v in denoiser.network.named_parameters())
    total = sum(v.numel() for v in before.values())
    assert abs(trace.info["mask_share"] - 0.5) < 0.01 and 0 < moved <= trace.info["mask_share"] * total


def test_trace_is_uce_then_ant_on_the_late_steps(spec):
    """TRACE composes two existing stages: the same weights as UCE's edit followed by ANT with a late window."""
    from score_erasure.testing import tiny_sd_pipeline

    method = get_method("trace")
    cfg = method.config(FAST["trace"])
    assert not cfg.adversarial and cfg.early_fraction == 0.5
    by_trace = denoiser_for(tiny_sd_pipeline(0))
    torch.manual_seed(0)
    method.fit(by_trace, spec, cfg, show_progress=False)
    by_hand = denoiser_for(tiny_sd_pipeline(0))
    torch.manual_seed(0)
    get_method("uce").fit(by_hand, spec, get_method("uce").config())
    ant = get_method("ant")
    ant.fit(by_hand, spec, ant.config({**FAST["ant"], "early_fraction": 0.5}), show_progress=False)
    hand = dict(by_hand.network.named_parameters())
    for k, v in by_trace.network.named_parameters():
        torch.testing.assert_close(v, hand[k], rtol=0, atol=0)
