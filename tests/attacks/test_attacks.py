"""Every attack on a tiny random pipeline: it spends exactly its budget, quickly, and returns a prompt the
attacked model can be drawn from; plus the pieces with a checkable definition."""

import time

import pytest
import torch

from score_erasure.attacks import ATTACKS, get_attack
from score_erasure.attacks.paraphrase import ParaphraseConfig, paraphrase_prompts
from score_erasure.attacks.ring_a_bell import concept_vector
from score_erasure.attacks.unlearndiff import project_simplex
from score_erasure.errors import UserError
from score_erasure.testing import FAST_ATTACK_CONFIGS as FAST

BUDGET_LENGTH = {"unlearndiff": "iterations", "p4d": "iterations", "inversion": "iterations",
                 "inversion-word": "iterations", "ring-a-bell": "generations"}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_runs_within_its_budget(name, ctx):
    attack = get_attack(name)
    cfg = attack.config(FAST[name])
    prompt = attack.prompts(ctx, cfg)[0]
    start = time.time()
    found = attack.run(ctx, prompt, 0, cfg)
    assert time.time() - start < 15
    if name in BUDGET_LENGTH:
        assert len(found.trace) == getattr(cfg, BUDGET_LENGTH[name])
    cond = found.condition(ctx.denoiser)
    assert cond.shape == ctx.denoiser.encode([prompt]).shape and torch.isfinite(cond).all()
    assert found.adversarial.strip()


def test_the_same_seed_finds_the_same_tokens(ctx):
    attack = get_attack("unlearndiff")
    cfg = attack.config(FAST["unlearndiff"])
    first, second = (attack.run(ctx, "a star", 0, cfg) for _ in range(2))
    assert torch.equal(first.prompt.ids, second.prompt.ids)


def test_inversion_learns_free_vectors_and_keeps_the_prompt(ctx):
    attack = get_attack("inversion")
    found = attack.run(ctx, "a star", 0, attack.config(FAST["inversion"]))
    assert found.vectors.shape == (1, ctx.denoiser.pipe.text_encoder.get_input_embeddings().embedding_dim)
    assert found.adversarial == "<S*> a star" and not found.exact_text


def test_inversion_word_learns_one_word_alone_and_draws_it_in_every_template(ctx):
    attack = get_attack("inversion-word")
    cfg = attack.config(FAST["inversion-word"])
    assert cfg.form == "word" and attack.config().iterations == 400 and attack.config().batch == 16
    templates = attack.prompts(ctx, cfg)
    assert templates == list(cfg.templates) and len(templates) == 4
    found = [attack.run(ctx, t, i, cfg) for i, t in enumerate(templates)]
    assert [f.adversarial for f in found] == ["a <S*>", "a picture of a <S*>", "a photo of a <S*>",
                                              "an image of a <S*>"]
    assert all(torch.equal(f.vectors, found[0].vectors) for f in found)  # learned once, for all templates
    words = {ctx.denoiser.tokenizer.decode([int(i)]) for f in found for i in f.prompt.ids[0]}
    assert not words & {"star", "stars"}  # the concept's name is nowhere in the prompts
    fresh = type(ctx)(**{**ctx.__dict__, "memo": {}})
    again = attack.run(fresh, templates[0], 0, cfg)
    assert torch.equal(again.vectors, found[0].vectors)  # same seed, same word


def test_inversion_templates_must_hold_the_word_alone():
    with pytest.raises(UserError, match="no \\{prompt\\}"):
        get_attack("inversion-word").config({"templates": ["{token} {prompt}"]})


def test_p4d_k_interleaves_learned_tokens_with_the_prompt(ctx):
    attack = get_attack("p4d")
    found = attack.run(ctx, "a picture of a star", 0, attack.config({**FAST["p4d"], "insert_every": 2}))
    assert len(found.prompt.slots) == 3  # after "a picture", "of a", "star"


def test_paraphrase_attacks_held_out_and_compositional_wording(ctx):
    prompts = paraphrase_prompts(ctx, ParaphraseConfig(extra_prompts=("a pentagram sketch",)))
    assert prompts == [*ctx.paraphrases, "a striped red pentagram", "a pentagram sketch"]
    assert paraphrase_prompts(ctx, ParaphraseConfig(compositional=False)) == ctx.paraphrases


def test_ring_a_bell_concept_vector_is_the_mean_pair_difference(ctx):
    d = ctx.denoiser
    c = concept_vector(d, ["a star", "a picture of a star"], ["a shape", "a picture of a shape"])
    expected = ((d.encode(["a star"]) - d.encode(["a shape"]) + d.encode(["a picture of a star"])
                 - d.encode(["a picture of a shape"])) / 2)[0]
    assert torch.allclose(c, expected, atol=1e-6)


def test_simplex_projection():
    u = torch.tensor([[0.5, 0.9, -0.3, 0.2], [0.25, 0.25, 0.25, 0.25]])
    p = project_simplex(u)
    assert torch.allclose(p.sum(-1), torch.ones(2)) and (p >= 0).all()
    assert torch.allclose(project_simplex(p), p)
    assert torch.allclose(p[1], u[1])


def test_unknown_attack_and_bad_budget_are_user_errors():
    with pytest.raises(UserError, match="choose one of: unlearndiff, p4d"):
        get_attack("gcg")
    with pytest.raises(UserError, match="invalid unlearndiff config: iterations"):
        get_attack("unlearndiff").config({"iterations": 0})


def test_a_shared_base_draw_gives_what_a_fresh_draw_gives(ctx, monkeypatch):
    """A bench's rows share the base's target images: the second row draws none and finds what it would have."""
    attack = get_attack("inversion")
    cfg = attack.config(FAST["inversion"])
    fresh = attack.run(ctx, "a star", 0, cfg)
    assert len(ctx.base_draws) == 1
    draws = []
    sample = ctx.base.sample
    monkeypatch.setattr(ctx.base, "sample", lambda *a, **k: draws.append(1) or sample(*a, **k))
    again = attack.run(ctx, "a star", 0, cfg)
    assert not draws and torch.equal(again.vectors, fresh.vectors) and again.trace == fresh.trace
