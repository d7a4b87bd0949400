"""The image cache: a rerun generates nothing, and a cached image is the image."""

import numpy as np

from score_erasure.evaluation.cache import ImageCache, default_cache_dir, sampling_key
from score_erasure.evaluation.protocol import Sampling

FAST = Sampling(steps=2)


def test_rerun_is_a_cache_hit_with_identical_pixels(tiny_pipe, tmp_path):
    first = ImageCache(tmp_path)
    a = first.images(tiny_pipe, "model-a", FAST, ["a star", "a circle"], [0, 1], show_progress=False)
    assert (first.hits, first.generated) == (0, 4)
    second = ImageCache(tmp_path)
    b = second.images(tiny_pipe, "model-a", FAST, ["a star", "a circle"], [0, 1], show_progress=False)
    assert (second.hits, second.generated) == (4, 0)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, 2, 32, 32, 3) and a.dtype == np.uint8


def test_only_missing_images_are_generated(tiny_pipe, tmp_path):
    cache = ImageCache(tmp_path)
    cache.images(tiny_pipe, "model-a", FAST, ["a star"], [0, 1], show_progress=False)
    more = ImageCache(tmp_path)
    more.images(tiny_pipe, "model-a", FAST, ["a star", "a heart"], [0, 1, 2], show_progress=False)
    assert (more.hits, more.generated) == (2, 4)


def test_key_separates_models_and_sampling(tiny_pipe, tmp_path):
    ImageCache(tmp_path).images(tiny_pipe, "model-a", FAST, ["a star"], [0], show_progress=False)
    other_model = ImageCache(tmp_path)
    other_model.images(tiny_pipe, "model-b", FAST, ["a star"], [0], show_progress=False)
    other_steps = ImageCache(tmp_path)
    other_steps.images(tiny_pipe, "model-a", Sampling(steps=3), ["a star"], [0], show_progress=False)
    assert other_model.generated == other_steps.generated == 1
    assert sampling_key(FAST) != sampling_key(Sampling(steps=2, guidance=5.0))


def test_images_drawn_with_another_thread_count_are_not_reused(tiny_pipe, tmp_path):
    """The thread count moves the last bits of every image: a cache shared by a one-thread and a two-thread run
    would otherwise hand each the other's images."""
    import torch

    threads = torch.get_num_threads()
    ImageCache(tmp_path).images(tiny_pipe, "model-a", FAST, ["a star"], [0], show_progress=False)
    try:
        torch.set_num_threads(1 if threads != 1 else 2)
        other = ImageCache(tmp_path)
        other.images(tiny_pipe, "model-a", FAST, ["a star"], [0], show_progress=False)
    finally:
        torch.set_num_threads(threads)
    same = ImageCache(tmp_path)
    same.images(tiny_pipe, "model-a", FAST, ["a star"], [0], show_progress=False)
    assert (other.hits, other.generated, same.hits) == (0, 1, 1)


def test_disabled_cache_always_generates(tiny_pipe, tmp_path):
    cache = ImageCache(None)
    cache.images(tiny_pipe, "model-a", FAST, ["a star"], [0], show_progress=False)
    cache.images(tiny_pipe, "model-a", FAST, ["a star"], [0], show_progress=False)
    assert (cache.hits, cache.generated) == (0, 2)


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SCORE_CACHE", str(tmp_path / "here"))
    assert default_cache_dir() == tmp_path / "here"
    monkeypatch.delenv("SCORE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "score-erasure" / "images"


def test_prompts_with_their_own_seeds_are_drawn_and_cached_with_them(tiny_pipe, tmp_path):
    from score_erasure.evaluation.cache import ImageCache
    from score_erasure.evaluation.protocol import Sampling
    from score_erasure.generate import generate

    sampling = Sampling(steps=2)
    cache = ImageCache(tmp_path / "cache")
    images = cache.images(tiny_pipe, "h" * 64, sampling, ["a star", "a circle"], [0, 1], show_progress=False,
                          prompt_seeds={"a circle": (7, 9)})
    assert np.array_equal(images[0], generate(tiny_pipe, ["a star"], [0, 1], steps=2, show_progress=False)[0])
    assert np.array_equal(images[1], generate(tiny_pipe, ["a circle"], [7, 9], steps=2, show_progress=False)[0])
    again = ImageCache(tmp_path / "cache")
    again.images(tiny_pipe, "h" * 64, sampling, ["a circle"], [0, 1], show_progress=False,
                 prompt_seeds={"a circle": (7, 9)})
    assert again.hits == 2 and again.generated == 0
