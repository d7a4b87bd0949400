"""Prompts as tokens: the same conditioning as the pipeline's own encoding, slots that change only themselves,
and the denoising target that every attack's loss uses."""

import numpy as np
import pytest
import torch

from score_erasure.backends import denoiser_for
from score_erasure.errors import UserError
from score_erasure.prompting.tokens import Vocabulary, exact_text, token_prompt
from score_erasure.testing import tiny_sd_pipeline


@pytest.fixture(scope="module")
def d():
    return denoiser_for(tiny_sd_pipeline(0))


def test_a_prompt_without_slots_conditions_like_encode(d):
    tokens = token_prompt(d, ["a picture of a star"])
    expected = d.pipe.tokenizer(["a picture of a star"], padding="max_length",
                                max_length=d.pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt")
    assert torch.equal(tokens.ids, expected.input_ids) and torch.equal(tokens.mask, expected.attention_mask)
    with torch.no_grad():
        assert torch.allclose(tokens.condition(d), d.encode(["a picture of a star"]), atol=1e-6)
    assert exact_text(d, tokens) and tokens.text(d.pipe.tokenizer) == "a picture of a star"


def test_slots_sit_where_asked_and_vectors_replace_only_them(d):
    tokens = token_prompt(d, [2, "a star"])
    assert tokens.slots.tolist() == [1, 2]  # after the start token
    vectors = torch.randn(2, d.pipe.text_encoder.get_input_embeddings().embedding_dim)
    embeds = tokens.embeds(d, vectors)
    assert torch.equal(embeds[0, tokens.slots], vectors)
    others = [i for i in range(tokens.ids.shape[1]) if i not in (1, 2)]
    assert torch.equal(embeds[0, others], tokens.embeds(d)[0, others])
    star = d.pipe.tokenizer("star", add_special_tokens=False).input_ids[0]
    assert tokens.with_tokens(torch.tensor([star, star])).text(d.pipe.tokenizer) == "star star a star"


def test_gradients_reach_the_slot_vectors(d):
    tokens = token_prompt(d, [1, "a star"])
    v = torch.randn(1, d.pipe.text_encoder.get_input_embeddings().embedding_dim, requires_grad=True)
    tokens.condition(d, v).sum().backward()
    assert v.grad is not None and v.grad.abs().sum() > 0


def test_too_many_tokens_is_a_user_error(d):
    with pytest.raises(UserError, match="optimise fewer"):
        token_prompt(d, [20, "a star"])  # the tiny encoder reads 16


def test_vocabulary_leaves_out_special_tokens(d):
    vocab = Vocabulary(d)
    assert not set(vocab.ids.tolist()) & set(d.pipe.tokenizer.all_special_ids)
    star = d.pipe.tokenizer("star", add_special_tokens=False).input_ids[0]
    assert vocab.nearest(vocab.embeddings[vocab.ids == star]).tolist() == [star]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_denoising_target_is_what_the_clean_estimate_inverts(prediction_type):
    d = denoiser_for(tiny_sd_pipeline(0, prediction_type=prediction_type))
    x0, noise, t = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.tensor([10, 400, 900])
    x_t = d.add_noise(x0, noise, t)
    assert torch.allclose(d.clean_estimate(x_t, t, d.target(x0, noise, t)), x0, atol=1e-4)


def test_drawing_from_a_conditioning_matches_drawing_from_the_text(d):
    from score_erasure.generate import generate

    prompts = ["a star", "a picture of a circle"]
    from_text = generate(d.pipe, prompts, [0, 1], steps=2, show_progress=False)
    from_embeds = generate(d.pipe, prompts, [0, 1], steps=2, show_progress=False,
                           prompt_embeds=torch.cat([token_prompt(d, [p]).condition(d) for p in prompts]).detach())
    assert np.array_equal(from_text, from_embeds)
