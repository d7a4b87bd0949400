"""The attacks on a token generator (a tiny random Janus): prompts frame as the generator's own prefixes, every
attack runs within its budget and its found prompt draws images, the objectives have their checkable values, and
`score attack`'s runner reports on an autoregressive pair."""

import json

import numpy as np
import pytest
import torch

from score_erasure.attacks import ATTACKS, AttackContext, get_attack
from score_erasure.attacks.ring_a_bell import concept_vector
from score_erasure.backends import token_generator_of
from score_erasure.backends.tokens import TokenConditioning
from score_erasure.evaluation.cache import ImageCache
from score_erasure.generate import generate
from score_erasure.jobs.attack import Subject, attack_pipeline
from score_erasure.prompting.optimise import CodeBatch, denoising_loss
from score_erasure.prompting.tokens import exact_text, prompt_text, token_prompt
from score_erasure.testing import FAST_ATTACK_CONFIGS as FAST
from score_erasure.testing import run_cli, tiny_emu3_pipeline, tiny_janus_pipeline, tiny_var_pipeline

BUDGET_LENGTH = {"unlearndiff": "iterations", "p4d": "iterations", "inversion": "iterations",
                 "inversion-word": "iterations", "ring-a-bell": "generations"}


@pytest.fixture(scope="module", params=[tiny_janus_pipeline, tiny_var_pipeline, tiny_emu3_pipeline],
                ids=["janus", "var", "emu3"])
def pipes(request):
    return request.param(0), request.param(1)


@pytest.fixture
def actx(pipes, protocol, world_judge, spec):
    groups = protocol.prompts("star")
    attacked, base = (token_generator_of(p) for p in pipes)
    return AttackContext(attacked, base, world_judge, protocol.concept("star").detect, protocol.sampling, spec,
                         groups["target"], groups["generality"], ["a striped red pentagram"])


def test_a_prompt_without_slots_is_the_generators_own_prefix(actx):
    g = actx.denoiser
    tokens = token_prompt(g, ["a picture of a star"])
    own = g.encode(["a picture of a star"])
    assert torch.equal(tokens.ids, own.input_ids) and torch.equal(tokens.mask, own.mask)
    with torch.no_grad():
        assert torch.equal(tokens.condition(g).embeds, own.embeds)
    assert exact_text(g, tokens) and prompt_text(g, tokens) == "a picture of a star"
    slotted = token_prompt(g, [2, "a star"])
    assert slotted.slots.tolist() == [1, 2]  # after [BOS]
    vectors = torch.randn(2, own.embeds.shape[-1])
    embeds = slotted.embeds(g, vectors)[0]
    assert torch.equal(embeds[1:3], vectors) and torch.equal(embeds[3:], slotted.embeds(g)[0, 3:])


def test_the_code_objective_is_the_cross_entropy_and_match_is_a_divergence(actx):
    g = actx.denoiser
    codes = torch.randint(g.codebook_size, (3, g.num_image_tokens), generator=torch.Generator().manual_seed(0))
    cond = g.encode(["a star"])
    batch = CodeBatch(codes)
    with torch.no_grad():
        logits = g.image_logits(cond.expand(3), codes)
        expected = -torch.log_softmax(logits.float(), -1).gather(-1, codes[..., None]).mean()
        assert denoising_loss(g, cond, batch).item() == pytest.approx(expected.item(), rel=1e-5)
        pred = batch.predict(g, cond)
        assert batch.match(pred, pred).item() == pytest.approx(0, abs=1e-6)
        assert batch.match(pred, batch.predict(actx.base, cond)).item() > 0


@pytest.mark.parametrize("name", list(ATTACKS))
def test_every_attack_runs_on_a_token_generator_within_its_budget(name, actx, pipes, protocol):
    attack = get_attack(name)
    cfg = attack.config(FAST[name])
    prompt = attack.prompts(actx, cfg)[0]
    found = attack.run(actx, prompt, 0, cfg)
    if name in BUDGET_LENGTH:
        assert len(found.trace) == getattr(cfg, BUDGET_LENGTH[name])
        assert all(np.isfinite(found.trace))
    cond = found.condition(actx.denoiser)
    assert isinstance(cond, TokenConditioning) and torch.isfinite(cond.embeds).all()
    images = generate(pipes[0], [found.adversarial], [0, 1], show_progress=False, prompt_embeds=cond)
    assert images.shape == (1, 2, 32, 32, 3)


def test_ring_a_bell_reads_prompts_through_the_generators_state_at_the_image(actx, spec):
    g = actx.denoiser
    with torch.no_grad():
        states = [g.prompt_state(g.encode([p]))[0] for p in spec.target_prompts + spec.anchor_prompts]
    n = len(spec.target_prompts)
    expected = (torch.stack(states[:n]) - torch.stack(states[n:])).mean(0)
    assert torch.allclose(concept_vector(g, spec.target_prompts, spec.anchor_prompts), expected, atol=1e-5)


def test_the_attack_runner_reports_on_an_autoregressive_pair(pipes, protocol, spec, world_judge, tmp_path):
    attack = get_attack("unlearndiff")
    subject = Subject(*pipes, "janus-0", "janus-1", "hash-0", "hash-1")
    report = attack_pipeline(subject, attack, attack.config(FAST["unlearndiff"]), protocol, "star", tmp_path,
                             judge=world_judge, spec=spec, compositional=[], cache=ImageCache(None),
                             show_progress=False)
    data = json.loads((tmp_path / "report.json").read_text())
    assert 0 <= data["asr"]["value"] <= 1 and len(data["rows"]) == len(protocol.concept("star").target)
    assert report.asr.value == data["asr"]["value"]


def test_attack_and_certify_commands_take_autoregressive_models(pipes, protocol_file, tmp_path, capsys, monkeypatch):
    for pipe, name in zip(pipes, ("erased", "base"), strict=True):
        pipe.save_pretrained(tmp_path / name)
    config = tmp_path / "budget.toml"
    config.write_text("iterations = 2\ntarget_images = 1\nbatch = 1\n")
    code, out, err = run_cli(capsys, monkeypatch, "attack", "--attack", "inversion", "--concept", "star", "--model",
                             tmp_path / "erased", "--base", tmp_path / "base", "--protocol", protocol_file,
                             "--config", config, "--out", tmp_path / "attack", "--no-cache")
    assert code == 0, err
    code, out, err = run_cli(capsys, monkeypatch, "certify", "--concept", "star", "--model", tmp_path / "erased",
                             "--base", tmp_path / "base", "--protocol", protocol_file, "-n", "8", "--folds", "2",
                             "--attacks", tmp_path / "attack", "--out", tmp_path / "certificate", "--no-cache")
    assert code == 0, err
    data = json.loads((tmp_path / "certificate" / "report.json").read_text())
    assert "<S*> a star" in data["concept_prompts"] and 0 <= data["mi_nats"]["value"] <= 1
