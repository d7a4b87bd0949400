"""Two CPU processes (torchrun): generation is sharded by batch and gives the images one process gives, written
once; erasure is data-parallel and ends with one model."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from score_erasure.testing import tiny_sd_pipeline

# torchrun: two CPU processes with gloo (accelerate's own launcher needs mpirun for several CPU processes)
LAUNCH = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "score_erasure"]


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
    launch = LAUNCH
    for command, out in (([sys.executable, "-m", "score_erasure"], "one"), (launch, "two")):
        done = subprocess.run([*command, *args, "--out", str(tmp_path / out)], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    names_one, one = _images(tmp_path / "one")
    names_two, two = _images(tmp_path / "two")
    assert names_one == names_two and len(one) == 6
    assert all(np.array_equal(a, b) for a, b in zip(one, two, strict=True))
    assert not list((tmp_path / "two").rglob("*.tmp"))
    import json

    assert json.loads((tmp_path / "two" / "generate.json").read_text())["processes"] == 2  # really two shards


@pytest.mark.parametrize("method", ["esd-x", pytest.param("score", marks=pytest.mark.slow)])
def test_two_processes_erase_data_parallel_into_one_model(tiny_dir, tmp_path, method):
    """Each process draws its own steps, gradients are averaged: the run ends with one model (checked across the
    processes at the end of training) and a delta unlike the one-process delta, whose steps were fewer."""
    import json

    from score_erasure.delta import ErasureDelta
    from score_erasure.testing import FAST_CONFIGS

    config = tmp_path / "fast.json"
    config.write_text(json.dumps(FAST_CONFIGS[method]))
    args = ["erase", "--model", str(tiny_dir), "--method", method, "--concept", "star", "--config", str(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launch = LAUNCH
    for command, out in (([sys.executable, "-m", "score_erasure"], "one"), (launch, "two")):
        done = subprocess.run([*command, *args, "--out", str(tmp_path / out)], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    one, two = (ErasureDelta.load(tmp_path / out / "delta.safetensors").tensors for out in ("one", "two"))
    assert one.keys() == two.keys() and any(not torch.equal(one[k], two[k]) for k in one)
