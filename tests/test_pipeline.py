"""The embedded model is a plain diffusers pipeline: it saves, reloads and samples deterministically."""

import numpy as np
from diffusers import StableDiffusionPipeline

from score_erasure.generate import generate


def test_embedded_is_a_stable_diffusion_pipeline_with_minilm(embedded):
    assert isinstance(embedded, StableDiffusionPipeline)
    assert type(embedded.text_encoder).__name__ == "BertModel"
    assert embedded.unet.config.cross_attention_dim == embedded.text_encoder.config.hidden_size == 384
    assert not any(p.requires_grad for p in embedded.text_encoder.parameters())


def test_save_load_round_trip_through_plain_diffusers(embedded, saved_embedded):
    reloaded = StableDiffusionPipeline.from_pretrained(saved_embedded)
    reloaded.set_progress_bar_config(disable=True)
    a = generate(embedded, ["a red star"], [0, 1], steps=4, show_progress=False)
    b = generate(reloaded, ["a red star"], [0, 1], steps=4, show_progress=False)
    np.testing.assert_array_equal(a, b)


def test_generate_is_deterministic_per_seed(embedded):
    a = generate(embedded, ["a blue circle on fire", "Zorblat"], [3, 4], steps=4, show_progress=False)
    b = generate(embedded, ["a blue circle on fire", "Zorblat"], [3, 4], steps=4, show_progress=False)
    assert a.shape == (2, 2, 32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[0, 0], a[0, 1]), "different seeds must give different images"


def test_batching_does_not_change_images(embedded):
    whole = generate(embedded, ["a square", "a heart"], [0, 1, 2], steps=3, show_progress=False)
    split = generate(embedded, ["a square", "a heart"], [0, 1, 2], steps=3, batch_size=2, show_progress=False)
    np.testing.assert_allclose(whole.astype(int), split.astype(int), atol=1)


def test_the_shipped_flux_model_draws_the_world_and_round_trips(tmp_path):
    from score_erasure.models import load_pipeline, resolve_model
    from score_erasure.pipelines import SingleEncoderFluxPipeline
    from score_erasure.toyworld.judge import WorldJudge

    pipe = load_pipeline("embedded-flux")
    assert isinstance(pipe, SingleEncoderFluxPipeline)
    assert resolve_model("embedded-flux").hash != resolve_model("embedded").hash
    images = generate(pipe, ["a red circle"], [0, 1], steps=25, show_progress=False)
    assert list(WorldJudge.load().judge(images[0]).colour) == ["red", "red"]
    pipe.save_pretrained(tmp_path / "flux")
    again = generate(load_pipeline(str(tmp_path / "flux")), ["a red circle"], [0, 1], steps=25, show_progress=False)
    assert (again == images).all()


def test_the_shipped_autoregressive_model_draws_the_world_and_round_trips(tmp_path):
    from score_erasure.models import load_pipeline, resolve_model
    from score_erasure.pipelines import JanusImagePipeline
    from score_erasure.toyworld.judge import WorldJudge

    pipe = load_pipeline("embedded-ar")
    assert isinstance(pipe, JanusImagePipeline)
    assert len({resolve_model(m).hash for m in ("embedded", "embedded-flux", "embedded-ar")}) == 3
    images = generate(pipe, ["a red circle"], [0, 1, 2, 3], show_progress=False)
    assert list(WorldJudge.load().judge(images[0]).colour).count("red") >= 3
    pipe.save_pretrained(tmp_path / "ar")
    again = generate(load_pipeline(str(tmp_path / "ar")), ["a red circle"], [0, 1, 2, 3], show_progress=False)
    assert (again == images).all()
