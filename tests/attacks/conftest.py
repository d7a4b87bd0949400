"""Fixtures for the attack tests: two tiny random pipelines (attacked model and base), a cut-down protocol and
the world judge (its 32x32 input is what the tiny pipelines draw)."""

import json

import pytest

from score_erasure.attacks import AttackContext
from score_erasure.backends import denoiser_for
from score_erasure.evaluation.judges import load_judge
from score_erasure.evaluation.protocol import Protocol
from score_erasure.spec import ConceptSpec
from score_erasure.testing import small_protocol_data, tiny_sd_pipeline


@pytest.fixture(scope="session")
def tiny():
    return tiny_sd_pipeline(0)


@pytest.fixture(scope="session")
def tiny_base():
    return tiny_sd_pipeline(1)


@pytest.fixture(scope="session")
def protocol():
    return Protocol.model_validate(small_protocol_data("object", "star"))


@pytest.fixture(scope="session")
def protocol_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("protocol") / "object-star.json"
    path.write_text(json.dumps(small_protocol_data("object", "star")))
    return path


@pytest.fixture(scope="session")
def world_judge(protocol):
    return load_judge(protocol.judge)


@pytest.fixture(scope="session")
def spec():
    return ConceptSpec(concepts=["star"], target_prompts=["a star", "a picture of a star"],
                       anchor_prompts=["a shape", "a picture of a shape"])


@pytest.fixture
def ctx(tiny, tiny_base, protocol, world_judge, spec):
    groups = protocol.prompts("star")
    return AttackContext(denoiser_for(tiny), denoiser_for(tiny_base), world_judge, protocol.concept("star").detect,
                         protocol.sampling, spec, groups["target"], groups["generality"], ["a striped red pentagram"])


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory):
    """The two tiny pipelines saved as diffusers folders, so that `--model` and `--base` can name them."""
    paths = []
    for seed in (0, 1):
        path = tmp_path_factory.mktemp(f"tiny-{seed}")
        tiny_sd_pipeline(seed).save_pretrained(path)
        paths.append(path)
    return paths
