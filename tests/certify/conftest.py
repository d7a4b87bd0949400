import json

import pytest

from score_erasure.testing import small_protocol_data, tiny_sd_pipeline


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """Two tiny pipelines saved as diffusers folders (a stand-in erased model and its base)."""
    paths = []
    for seed in (0, 1):
        path = tmp_path_factory.mktemp(f"tiny-certify-{seed}")
        tiny_sd_pipeline(seed).save_pretrained(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def star_protocol(tmp_path_factory):
    path = tmp_path_factory.mktemp("certify-protocol") / "object-star.json"
    path.write_text(json.dumps(small_protocol_data("object", "star")))
    return path
