"""score-robust: each inner attack adds one found conditioning to the concept set, never more than the cap,
and the run records the attack's objective beside SCORE's terms."""

import numpy as np
import torch

from score_erasure.backends import denoiser_for
from score_erasure.methods import get_method
from score_erasure.methods.score_robust import RobustScoreTraining
from score_erasure.testing import FAST_CONFIGS as FAST


def test_inner_attack_grows_the_concept_set_up_to_the_cap(pipe, spec):
    cfg = get_method("score-robust").config({**FAST["score-robust"], "max_adversarial": 2, "persistent": False})
    run = RobustScoreTraining(denoiser_for(pipe), spec, cfg)
    clean = len(run.c_e)
    network = {k: v.detach().clone() for k, v in run.denoiser.network.named_parameters()}
    sizes = []
    for k in range(3):
        loss, terms = run.step(k)
        assert torch.isfinite(loss) and "attack" in terms and "adv" in terms
        sizes.append(len(run.c_e))
    assert sizes == [clean + 1, clean + 2, clean + 2]
    assert all(torch.equal(v, network[k]) for k, v in run.denoiser.network.named_parameters())  # steps never update


def test_score_robust_fits_and_traces_the_inner_attack(pipe, spec):
    method = get_method("score-robust")
    trace = method.fit(denoiser_for(pipe), spec, method.config(FAST["score-robust"]), show_progress=False)
    assert len(trace.series("attack")) == 2 and len(trace.series("mi")) == 2


def test_persistent_attacks_continue_one_vector_per_target_prompt(pipe, spec, monkeypatch):
    import importlib

    score_robust = importlib.import_module("score_erasure.methods.score_robust")

    one_target = spec.model_copy(update={"target_prompts": spec.target_prompts[:1],
                                         "anchor_prompts": spec.anchor_prompts[:1]})
    cfg = get_method("score-robust").config({**FAST["score-robust"], "persistent": True, "attack_iterations": 2})
    run = RobustScoreTraining(denoiser_for(pipe), one_target, cfg)
    starts, real = [], score_robust.soft_prompt_steps
    monkeypatch.setattr(score_robust, "soft_prompt_steps",
                        lambda d, prompt, v, *a: starts.append(v.clone()) or real(d, prompt, v, *a))
    after = []
    for k in range(3):
        run.inner_attack(k)
        after.append(run.vectors[0].clone())
        assert len(run.c_e) == 2  # the clean prompt and its one adversarial δ, replaced, never appended
    assert torch.equal(starts[1], after[0]) and torch.equal(starts[2], after[1])  # each attack continues the last δ
    assert not torch.equal(after[0], after[1])


def test_the_word_form_continues_one_word_alone_across_the_templates(pipe, spec, monkeypatch):
    """attack_form "word": δ in "a <δ>", "a picture of a <δ>", ... (no concept word), one δ for every template,
    learned on the base images of every target prompt."""
    import importlib

    from score_erasure.prompting.tokens import WORD_TEMPLATES

    score_robust = importlib.import_module("score_erasure.methods.score_robust")
    cfg = get_method("score-robust").config({**FAST["score-robust"], "attack_form": "word", "attack_iterations": 2})
    run = RobustScoreTraining(denoiser_for(pipe), spec, cfg)
    assert len(run.attack_prompts) == len(WORD_TEMPLATES)
    words = {run.denoiser.tokenizer.decode([int(i)]) for p, _ in run.attack_prompts for i in p.ids[0]}
    assert "star" not in words
    seen, real = [], score_robust.soft_prompt_steps
    monkeypatch.setattr(score_robust, "soft_prompt_steps",
                        lambda d, prompt, v, x, *a: seen.append((v.clone(), len(x))) or real(d, prompt, v, x, *a))
    after = []
    for k in range(3):
        run.inner_attack(k)
        after.append(run.vectors[-1].clone())
    assert set(run.vectors) == {-1}  # one word
    assert torch.equal(seen[1][0], after[0]) and torch.equal(seen[2][0], after[1])
    assert all(n == len(run.bank_e[0]) for _, n in seen)  # every target prompt's base images


def test_both_forms_attack_the_prompts_and_the_word_alone(pipe, spec):
    from score_erasure.prompting.tokens import WORD_TEMPLATES

    cfg = get_method("score-robust").config({**FAST["score-robust"], "attack_form": "both", "attack_iterations": 1})
    run = RobustScoreTraining(denoiser_for(pipe), spec, cfg)
    assert [w for _, w in run.attack_prompts] == [False] * len(spec.target_prompts) + [True] * len(WORD_TEMPLATES)
    for k in range(12):
        run.inner_attack(k)
    assert -1 in run.vectors and any(key >= 0 for key in run.vectors)  # a word and at least one prompt's δ


def test_found_conditionings_are_steered_from_their_targets_anchor_when_asked(pipe, spec):
    cfg = get_method("score-robust").config({**FAST["score-robust"], "attack_form": "both", "attack_iterations": 1,
                                             "persistent": False})
    n, kinds = len(spec.target_prompts), set()
    for reference in ("empty", "anchor"):
        run = RobustScoreTraining(denoiser_for(pipe), spec, cfg.model_copy(update={"adversarial_reference": reference}))
        for k in range(6):
            run.inner_attack(k)
            i = int(np.random.default_rng([cfg.seed, 4, k]).integers(len(run.attack_prompts)))
            kinds.add(i >= n)
            expected = (run.uncond if reference == "empty" else
                        run.c_a[(i - n) % len(run.c_a) if i >= n else i][None])
            torch.testing.assert_close(run.reference(len(run.c_e) - 1), expected)
        torch.testing.assert_close(run.reference(0), run.c_a[:1])  # the spec's own targets: as in score
    assert kinds == {False, True}  # both a target prompt's δ and the word were found
