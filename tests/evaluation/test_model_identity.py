"""Model identity: the hash that keys the image cache and is recorded in every report."""

import shutil

import pytest

from score_erasure.backends.base import resolution
from score_erasure.errors import UserError
from score_erasure.models import resolve_model


def test_model_hash_follows_content_not_location(tiny_model_dir, other_model_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    assert resolve_model(str(copy)).hash == resolve_model(str(tiny_model_dir)).hash
    assert resolve_model(str(other_model_dir)).hash != resolve_model(str(tiny_model_dir)).hash


def test_model_hash_of_an_uncached_hub_id():
    with pytest.raises(UserError, match="not in the local hub cache"):
        _ = resolve_model("nobody/no-such-model").hash


def test_resolution_of_a_pipeline(tiny_pipe):
    assert resolution(tiny_pipe) == (32, 32)
