"""A long job killed with SIGKILL loses nothing: no final-looking file is left, and `--resume` ends with the result
of an uninterrupted run (issue #19)."""

import json
import os
import subprocess
import sys
import time

import torch

from score_erasure.delta import ErasureDelta
from score_erasure.jobs.attack import run_attack
from score_erasure.jobs.bench import bench
from score_erasure.jobs.erase import erase
from score_erasure.models import resolve_model
from score_erasure.testing import FAST_ATTACK_CONFIGS, FAST_CONFIGS, small_protocol_data
from score_erasure.toyworld.train import TrainConfig, train

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


def test_a_killed_attack_reruns_to_the_report_of_an_uninterrupted_run(tiny_model_dir, tmp_path):
    """Each attacked prompt is saved when done: a rerun (no flag needed, the run never finished) attacks only the
    prompts the kill cut off."""
    protocol = tmp_path / "object-star.json"
    protocol.write_text(json.dumps(small_protocol_data("object", "star", per_group=3)))
    budget = tmp_path / "budget.json"
    budget.write_text(json.dumps({**FAST_ATTACK_CONFIGS["inversion"], "iterations": 40}))
    args = ["attack", "--attack", "inversion", "-m", tiny_model_dir, "-c", "star", "--protocol", protocol,
            "--config", budget, "--no-cache"]
    whole = run_attack(str(tiny_model_dir), "inversion", "star", tmp_path / "whole", protocol_path=protocol,
                       overrides=json.loads(budget.read_text()), use_cache=False, show_progress=False)

    cut = tmp_path / "cut"
    proc = subprocess.Popen(_score(*args, "--out", cut), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _kill_when(proc, lambda: (cut / "prompts" / "000.safetensors").is_file())
    assert not (cut / "report.json").exists() and not (cut / "report.html").exists()

    done = subprocess.run(_score(*args, "--out", cut), check=True, env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert f"of {len(whole.rows)} prompts resumed" in done.stdout and f" 0 of {len(whole.rows)}" not in done.stdout
    again = json.loads((cut / "report.json").read_text())
    assert [(r["prompt"], r["adversarial"], r["rate"]) for r in again["rows"]] == \
        [(r.prompt, r.adversarial, r.rate) for r in whole.rows]
    assert again["asr"] == whole.asr.model_dump()


def test_a_killed_world_train_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path):
    cfg = TrainConfig(pool_size=24, vae_steps=3, vae_batch=2, unet_steps=20, unet_batch=2, checkpoint_every=2,
                      warmup_steps=1)
    config = tmp_path / "train.json"
    config.write_text(cfg.model_dump_json())
    train(tmp_path / "whole", cfg)

    cut = tmp_path / "cut"
    args = ["world", "train", "--config", config, "--out", cut]
    proc = subprocess.Popen(_score(*args), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(proc, lambda: (cut / "unet-checkpoint.safetensors").is_file())
    assert not (cut / "unet").exists()
    refused = subprocess.run(_score(*args), env=ENV, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "pass --overwrite to replace it, --resume to continue it" in refused.stderr

    subprocess.run(_score(*args, "--resume"), check=True, env=ENV, capture_output=True, timeout=600)

    def weights(run):
        from safetensors.torch import load_file

        return load_file(str(run / "unet" / "diffusion_pytorch_model.safetensors"))

    whole, resumed = weights(tmp_path / "whole"), weights(cut)
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)
