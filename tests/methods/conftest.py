import pytest

from score_erasure.spec import ConceptSpec
from score_erasure.testing import tiny_sd_pipeline


@pytest.fixture
def pipe():
    return tiny_sd_pipeline(0)


@pytest.fixture
def spec():
    return ConceptSpec(concepts=["star"], target_prompts=["a star", "a picture of a star"],
                       anchor_prompts=["a shape", "a picture of a shape"], retain_prompts=["a circle", "a square"])
