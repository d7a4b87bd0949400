"""`accelerate launch` with two CPU processes: generation is sharded by batch and gives the images one process
gives, written once."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from score_erasure.testing import tiny_sd_pipeline


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    tiny_sd_pipeline(0).save_pretrained(path)
    return path


def _images(folder):
    files = sorted((folder / "images").rglob("*.png"))
    return [f.relative_to(folder) for f in files], [np.asarray(Image.open(f)) for f in files]


def test_two_processes_generate_exactly_what_one_does(tiny_dir, tmp_path):
    args = ["generate", "--model", str(tiny_dir), "-p", "a star", "-p", "a red circle", "-n", "3", "--steps", "2",
            "--batch-size", "2"]  # 6 images, 3 batches: process 0 draws batches 0 and 2, process 1 batch 1
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines",
              "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "score_erasure"]
    for command, out in (([sys.executable, "-m", "score_erasure"], "one"), (launch, "two")):
        done = subprocess.run([*command, *args, "--out", str(tmp_path / out)], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    names_one, one = _images(tmp_path / "one")
    names_two, two = _images(tmp_path / "two")
    assert names_one == names_two and len(one) == 6
    assert all(np.array_equal(a, b) for a, b in zip(one, two, strict=True))
    assert not list((tmp_path / "two").rglob("*.tmp"))
