"""Fixtures for the evaluation tests: a tiny random-weight pipeline that makes 32x32 images (so the world
judge can read them) and small protocols cut from the packaged ones."""

import json

import pytest

from score_erasure.testing import small_protocol_data
from score_erasure.testing import tiny_sd_pipeline as tiny_pipeline


@pytest.fixture(scope="session")
def tiny_pipe():
    return tiny_pipeline(0)


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory):
    """A tiny model that makes 16x16 images: a base of the wrong resolution."""
    path = tmp_path_factory.mktemp("tiny-model-16px")
    tiny_pipeline(0, latent_size=4).save_pretrained(path)
    return path


def write_small_protocol(folder, task: str = "object", concept: str = "star", **sizes):
    path = folder / f"{task}-{concept}.json"
    path.write_text(json.dumps(small_protocol_data(task, concept, **sizes)))
    return path


@pytest.fixture(scope="session")
def protocol_writer():
    """write(folder, task, concept, **sizes) -> path of a small protocol file (for module-scoped fixtures)."""
    return write_small_protocol


@pytest.fixture
def small_protocol(tmp_path):
    """small_protocol(task, concept, **sizes) -> path of a small protocol file in tmp_path."""
    return lambda task="object", concept="star", **sizes: write_small_protocol(tmp_path, task, concept, **sizes)
