"""A long job killed with SIGKILL loses nothing: no final-looking file is left, and `--resume` ends with the result
of an uninterrupted run (issue #19)."""

import json
import os
import subprocess
import sys
import time

import torch

from score_erasure.delta import ErasureDelta
from score_erasure.jobs.bench import bench
from score_erasure.jobs.erase import erase
from score_erasure.models import resolve_model
from score_erasure.testing import FAST_CONFIGS, small_protocol_data

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def _score(*args) -> list[str]:
    return [sys.executable, "-m", "score_erasure", *map(str, args)]


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 240) -> None:
    """SIGKILL `proc` as soon as `ready()` holds (a checkpoint or a finished row is on disk)."""
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.time() < deadline, "the run never reached the point to interrupt"
        time.sleep(0.05)
    proc.kill()
    proc.wait()


def test_a_killed_erase_resumes_to_the_delta_of_an_uninterrupted_run(tiny_model_dir, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**FAST_CONFIGS["esd-x"], "iterations": 60}))
    args = ["erase", "--method", "esd-x", "-m", tiny_model_dir, "-c", "star", "--config", config,
            "--checkpoint-every", "5"]
    # The uninterrupted run in this process (the suite runs torch with the CLI's default 2 threads).
    erase(str(tiny_model_dir), "esd-x", resolve_model(str(tiny_model_dir)).spec(["star"]), tmp_path / "whole",
          json.loads(config.read_text()), checkpoint_every=5, show_progress=False)

    cut = tmp_path / "cut"
    proc = subprocess.Popen(_score(*args, "--out", cut), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _kill_when(proc, lambda: (cut / "checkpoint.safetensors").is_file())
    assert not (cut / "delta.safetensors").exists() and not (cut / "erase.json").exists()

    subprocess.run(_score(*args, "--out", cut, "--resume"), check=True, env=ENV, capture_output=True, timeout=600)
    whole = ErasureDelta.load(tmp_path / "whole" / "delta.safetensors").tensors
    resumed = ErasureDelta.load(cut / "delta.safetensors").tensors
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_a_killed_bench_resumes_to_the_table_of_an_uninterrupted_run(tiny_model_dir, tmp_path):
    protocol = tmp_path / "object-star.json"
    protocol.write_text(json.dumps(small_protocol_data("object", "star")))
    fast = tmp_path / "fast.json"
    fast.write_text(json.dumps({**FAST_CONFIGS["esd-x"], "iterations": 30}))
    args = ["bench", "-m", tiny_model_dir, "-c", "star", "--protocol", protocol, "--methods", "none,uce",
            "--variant", f"esd-fast=esd-x:{fast}", "--no-cache"]
    bench(str(tiny_model_dir), "star", ["none", "uce"], tmp_path / "whole", protocol_path=protocol, use_cache=False,
          variants={"esd-fast": ("esd-x", json.loads(fast.read_text()))})

    cut = tmp_path / "cut"
    proc = subprocess.Popen(_score(*args, "--out", cut), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _kill_when(proc, lambda: (cut / "uce" / "row.json").is_file())
    assert not (cut / "results.json").exists() and not (cut / "results.md").exists()

    done = subprocess.run(_score(*args, "--out", cut, "--resume"), check=True, env=ENV, capture_output=True,
                          text=True, timeout=600)
    assert "done in an earlier run: kept" in done.stderr  # the finished rows were not run again

    def rows(folder):
        table = json.loads((folder / "results.json").read_text())["rows"]
        return [(r["method"], r["status"], r["metrics"]) for r in table]

    assert rows(cut) == rows(tmp_path / "whole")
