"""The token backend (autoregressive generators) on a tiny random Janus and a tiny next-scale (VAR) model: teacher
forcing agrees with sampling, images depend on their prompt and seed only, parameter groups, saved folders and
transformers checkpoints load through the model resolver, and diffusion-only code refuses these models in one
line; the next-scale model's quantiser and block-causal attention."""

import json

import numpy as np
import pytest
import torch

from score_erasure.backends import backend_for, denoiser_for, token_generator_of
from score_erasure.backends.base import resolution
from score_erasure.errors import UserError
from score_erasure.generate import generate
from score_erasure.models import resolve_model
from score_erasure.pipelines import JanusImagePipeline, VARImagePipeline
from score_erasure.testing import (
    run_cli,
    small_protocol_data,
    tiny_emu3_pipeline,
    tiny_janus_pipeline,
    tiny_var_pipeline,
)

PROMPTS = ["a star", "a striped red star on a blue ground"]  # different lengths: the shorter one is left-padded


@pytest.fixture(scope="module")
def janus():
    return tiny_janus_pipeline(0)


@pytest.fixture(scope="module")
def var():
    return tiny_var_pipeline(0)


@pytest.fixture(scope="module")
def emu3():
    return tiny_emu3_pipeline(0)


@pytest.fixture(scope="module", params=["janus", "var", "emu3"])
def token_pipe(request):
    return request.getfixturevalue(request.param)


def test_teacher_forced_logits_are_those_the_sampler_drew_from(token_pipe):
    """Greedy codes drawn step by step (with Janus's KV cache; scale by scale for VAR) are the argmax of the logits
    computed in one teacher-forced pass: the same positions, masks and code inputs on both paths (guidance 1 = the
    conditional logits alone)."""
    generator = token_generator_of(token_pipe)
    cond = generator.encode(PROMPTS)
    assert cond.mask[0].tolist().count(0) > 0  # the short prompt is padded
    codes = generator.sample(cond, [torch.Generator().manual_seed(0)] * 2, guidance=1.0, temperature=1e-8)
    with torch.no_grad():
        logits = generator.image_logits(cond, codes)
    assert logits.shape == (2, generator.num_image_tokens, generator.codebook_size)
    assert torch.equal(logits.argmax(-1), codes)


def test_an_image_depends_on_its_prompt_and_seed_only(token_pipe):
    together = generate(token_pipe, PROMPTS, [3, 4], show_progress=False)
    alone = generate(token_pipe, PROMPTS[:1], [4], show_progress=False)
    assert together.shape == (2, 2, 32, 32, 3) and together.dtype == np.uint8
    assert np.array_equal(together[0, 1], alone[0, 0])
    assert not np.array_equal(together[0, 0], together[0, 1])  # another seed, another image
    assert resolution(token_pipe) == (32, 32)


def test_likelihood_gradients_reach_exactly_the_chosen_group(token_pipe):
    generator, network = token_generator_of(token_pipe), token_generator_of(token_pipe).network
    attention, ffn = generator.parameters("attention"), generator.parameters("ffn")
    assert attention and ffn and not set(attention) & set(ffn)
    assert set(generator.parameters("attention+ffn")) == set(attention) | set(ffn)
    codes = generator.image_codes(torch.rand(2, 32, 32, 3))
    assert codes.shape == (2, generator.num_image_tokens) and int(codes.max()) < generator.codebook_size
    network.zero_grad()
    generator.code_log_probs(generator.encode(PROMPTS), codes).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in attention.values())
    network.zero_grad()
    with pytest.raises(ValueError, match="unknown parameter group"):
        generator.parameters("xattn")


def test_saved_pipelines_and_transformers_checkpoints_load_by_name(janus, tmp_path):
    reference = generate(janus, PROMPTS[:1], [0], show_progress=False)
    janus.save_pretrained(tmp_path / "pipe")
    # a transformers checkpoint (as Janus-Pro is published): the model and tokenizer, special tokens in its config
    checkpoint = tmp_path / "checkpoint"
    janus.model.generation_config.bos_token_id = janus.config.bos_token_id
    janus.model.generation_config.pad_token_id = janus.config.pad_token_id
    janus.model.generation_config.generation_kwargs = {"boi_token_id": janus.config.boi_token_id}
    janus.model.save_pretrained(checkpoint)
    janus.tokenizer.save_pretrained(checkpoint)
    assert json.loads((checkpoint / "config.json").read_text())["model_type"] == "janus"
    for folder in (tmp_path / "pipe", checkpoint):
        pipe = resolve_model(str(folder)).load()
        assert isinstance(pipe, JanusImagePipeline)
        assert np.array_equal(generate(pipe, PROMPTS[:1], [0], show_progress=False), reference)


def test_score_generate_draws_from_a_janus_folder(janus, tmp_path, capsys, monkeypatch):
    janus.save_pretrained(tmp_path / "pipe")
    code, _, err = run_cli(capsys, monkeypatch, "generate", "--model", tmp_path / "pipe", "--prompt", "a star",
                           "-n", "2", "--out", tmp_path / "out")
    assert code == 0, err
    assert len(list((tmp_path / "out").rglob("seed*.png"))) == 2


def test_diffusion_code_refuses_a_token_model_in_one_line(janus):
    assert backend_for(janus).family == "janus"
    with pytest.raises(UserError, match="draws images as tokens"):
        denoiser_for(janus)


def test_score_evaluate_measures_a_janus_model_against_its_base(janus, tmp_path, capsys, monkeypatch):
    janus.save_pretrained(tmp_path / "pipe")
    (tmp_path / "protocol.json").write_text(json.dumps(small_protocol_data("object", "star")))
    common = ("--protocol", tmp_path / "protocol.json", "-c", "star", "--no-cache")
    code, _, err = run_cli(capsys, monkeypatch, "evaluate", "--model", tmp_path / "pipe", *common,
                           "--out", tmp_path / "refused")
    assert code != 0 and "JanusForConditionalGeneration" in err and "--base" in err  # the default base is SD
    code, _, err = run_cli(capsys, monkeypatch, "evaluate", "--model", tmp_path / "pipe", "--base", tmp_path / "pipe",
                           *common, "--out", tmp_path / "ev")
    assert code == 0, err
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["metrics"]["fid"]["value"] == 0 and 0 <= report["metrics"]["acc_e"]["value"] <= 1


def test_a_saved_next_scale_pipeline_loads_by_name_and_draws_the_same(var, tmp_path, capsys, monkeypatch):
    reference = generate(var, PROMPTS[:1], [0], show_progress=False)
    var.save_pretrained(tmp_path / "pipe")
    pipe = resolve_model(str(tmp_path / "pipe")).load()
    assert isinstance(pipe, VARImagePipeline)
    assert np.array_equal(generate(pipe, PROMPTS[:1], [0], show_progress=False), reference)
    code, _, err = run_cli(capsys, monkeypatch, "generate", "--model", tmp_path / "pipe", "--prompt", "a star",
                           "-n", "2", "--out", tmp_path / "out")
    assert code == 0, err
    assert len(list((tmp_path / "out").rglob("seed*.png"))) == 2


def test_emu3_saved_pipelines_and_checkpoints_load_and_draw_the_same(emu3, tmp_path):
    """A saved Emu3ImagePipeline by name; a transformers Emu3 checkpoint (model and tokenizer, as Emu3 is
    published) is recognised by its config and drawn at a given size."""
    from score_erasure.models import _token_checkpoint_loader
    from score_erasure.pipelines import Emu3ImagePipeline

    reference = generate(emu3, PROMPTS[:1], [0], show_progress=False)
    emu3.save_pretrained(tmp_path / "pipe")
    checkpoint = tmp_path / "checkpoint"
    emu3.model.save_pretrained(checkpoint)
    emu3.tokenizer.save_pretrained(checkpoint)
    assert _token_checkpoint_loader(checkpoint / "config.json") == Emu3ImagePipeline.from_emu3
    for pipe in (resolve_model(str(tmp_path / "pipe")).load(), Emu3ImagePipeline.from_emu3(str(checkpoint), None, 32)):
        assert isinstance(pipe, Emu3ImagePipeline) and pipe.config.grid_size == 8
        assert np.array_equal(generate(pipe, PROMPTS[:1], [0], show_progress=False), reference)


def test_emu3_writes_codes_as_visual_words_with_an_end_of_line_after_each_row(emu3):
    generator = token_generator_of(emu3)
    codes = torch.arange(64).view(1, 64)
    sequence = generator.sequence(codes)
    mapping = emu3.model.model.vocabulary_mapping
    assert sequence.shape == (1, 8 * 9)
    assert (sequence.view(8, 9)[:, -1] == mapping.eol_token_id).all()
    assert torch.equal(sequence[:, generator.code_slots()], mapping.img2bpe_mapping_tensor.long()[codes])
    cond = generator.encode(["a red star"])
    uncond = generator.unconditional(cond)
    words = emu3.tokenizer.convert_ids_to_tokens(uncond.input_ids[0].tolist())
    assert words[0] == "[CLS]" and words[-1] == "<|image token|>" and "<|image start|>" in words
    assert "red" not in words and "star" not in words and "[PAD]" in words  # the caption's words alone padded


def test_the_residual_quantiser_sums_its_scales_and_feeds_each_the_ones_before(var):
    """f_hat from codes is the quantiser's last partial sum, and scale k's input tokens are the partial sum of the
    scales before it, resized to scale k: what sampling computes as it goes."""
    vq = var.vq
    with torch.no_grad():
        f = vq.features(torch.rand(2, 3, 32, 32) * 2 - 1)
        codes, partial = vq.quantize(f)
        assert codes.shape == (2, 1 + 4 + 16 + 64)
        torch.testing.assert_close(vq.latents(codes), partial[-1])
        inputs = vq.teacher_inputs(codes).split([4, 16, 64], 1)
        for k, given in enumerate(inputs, start=1):
            torch.testing.assert_close(given, vq.next_inputs(partial[k - 1], k))
        # each scale quantises what the ones before left: the residual shrinks at the finest scale
        assert (f - partial[-1]).norm() < (f - partial[-2]).norm()


def test_a_scale_sees_the_scales_before_it_and_not_those_after(var):
    """Block-causal attention: changing the codes of scale 3 (4x4) leaves the logits of scales 1 to 3 as they were
    and changes those of scale 4."""
    generator = token_generator_of(var)
    cond = generator.encode(PROMPTS)
    codes = torch.randint(0, generator.codebook_size, (2, generator.num_image_tokens))
    changed = codes.clone()
    changed[:, 5:21] = (changed[:, 5:21] + 1) % generator.codebook_size
    with torch.no_grad():
        before, after = generator.image_logits(cond, codes), generator.image_logits(cond, changed)
    torch.testing.assert_close(before[:, :21], after[:, :21])
    assert not torch.allclose(before[:, 21:], after[:, 21:])


def test_expected_latents_of_one_hot_logits_are_the_codes_latents(var):
    generator = token_generator_of(var)
    codes = torch.randint(0, generator.codebook_size, (2, generator.num_image_tokens))
    one_hot = torch.nn.functional.one_hot(codes, generator.codebook_size).float() * 1e4
    torch.testing.assert_close(generator.expected_latents(one_hot), var.vq.latents(codes).detach())


@pytest.mark.parametrize("l2", [True, False])
def test_janus_codes_are_snapped_and_decoded_with_one_codebook(janus, l2):
    """Janus's own tokenizer (l2_codes, LlamaGen's codebook_l2_norm) decodes unit-length vectors as transformers
    does and snaps by cosine; a tokenizer trained on raw vectors (embedded-ar) decodes and snaps those, as
    transformers' encoder does. Either way an image's codes are those of the nearest decodable vector."""
    pipe = JanusImagePipeline(janus.model, janus.tokenizer, **{**{k: janus.config[k] for k in (
        "template", "bos_token_id", "boi_token_id", "pad_token_id")}, "l2_codes": l2})
    generator, vq = token_generator_of(pipe), janus.model.model.vqmodel
    codes = torch.randint(generator.codebook_size, (2, generator.num_image_tokens),
                          generator=torch.Generator().manual_seed(0))
    norms = generator.codebook.norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms)) == l2
    with torch.no_grad():
        if l2:
            transformers_decoded = ((janus.model.decode_image_tokens(codes) + 1) / 2).clamp(0, 1)
            torch.testing.assert_close(generator.decode(codes), transformers_decoded)
        images = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(1))
        z = vq.quant_conv(vq.encoder(images.permute(0, 3, 1, 2) * 2 - 1)).flatten(2).transpose(1, 2)
        if l2:
            z = torch.nn.functional.normalize(z, dim=-1)
        expected = ((z[:, :, None] - generator.codebook[None, None]) ** 2).sum(-1).argmin(-1)
        assert torch.equal(generator.image_codes(images), expected)
        if not l2:
            assert torch.equal(generator.image_codes(images), vq.encode(images.permute(0, 3, 1, 2) * 2 - 1)
                               .image_tokens.view(2, -1))


def test_next_scale_model_refuses_a_prompt_longer_than_its_positions(var):
    generator = token_generator_of(var)
    with pytest.raises(UserError, match="at most 34 tokens"):
        generator.sample(generator.encode(["a red star " * 12]), [torch.Generator()], guidance=1.0)
