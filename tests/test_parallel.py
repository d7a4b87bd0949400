"""Two CPU processes (torchrun): generation is sharded by batch and gives the images one process gives, written
once; erasure is data-parallel and ends with one model."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from score_erasure.delta import ErasureDelta
from score_erasure.testing import FAST_CONFIGS

# torchrun: two CPU processes with gloo (accelerate's own launcher needs mpirun for several CPU processes)
LAUNCH = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "score_erasure"]
ONE = [sys.executable, "-m", "score_erasure"]


def _run_one_and_two(args: list[str], tmp_path):
    """The same `score` command in one process (into tmp_path/one) and in two (tmp_path/two)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for command, out in ((ONE, "one"), (LAUNCH, "two")):
        done = subprocess.run([*command, *args, "--out", str(tmp_path / out)], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    return tmp_path / "one", tmp_path / "two"


def _images(folder):
    files = sorted((folder / "images").rglob("*.png"))
    return [f.relative_to(folder) for f in files], [np.asarray(Image.open(f)) for f in files]


def test_two_processes_generate_exactly_what_one_does(tiny_model_dir, tmp_path):
    # 6 images in batches of 2: process 0 draws batches 0 and 2, process 1 batch 1
    one, two = _run_one_and_two(["generate", "--model", str(tiny_model_dir), "-p", "a star", "-p", "a red circle",
                                 "-n", "3", "--steps", "2", "--batch-size", "2"], tmp_path)
    (names_one, images_one), (names_two, images_two) = _images(one), _images(two)
    assert names_one == names_two and len(images_one) == 6
    assert all(np.array_equal(a, b) for a, b in zip(images_one, images_two, strict=True))
    assert not list(two.rglob("*.tmp"))
    assert json.loads((two / "generate.json").read_text())["processes"] == 2  # really two shards


@pytest.mark.parametrize("method", ["esd-x", pytest.param("score", marks=pytest.mark.slow)])
def test_two_processes_erase_data_parallel_into_one_model(tiny_model_dir, tmp_path, method):
    """Each process draws its own steps, gradients are averaged: the run ends with one model (checked across the
    processes at the end of training) and a delta unlike the one-process delta, whose steps were fewer."""
    config = tmp_path / "fast.json"
    config.write_text(json.dumps(FAST_CONFIGS[method]))
    one, two = _run_one_and_two(["erase", "--model", str(tiny_model_dir), "--method", method, "--concept", "star",
                                 "--config", str(config)], tmp_path)
    one, two = (ErasureDelta.load(folder / "delta.safetensors").tensors for folder in (one, two))
    assert one.keys() == two.keys() and any(not torch.equal(one[k], two[k]) for k in one)
