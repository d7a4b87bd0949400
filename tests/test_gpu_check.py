"""The GPU check script (benchmarks/gpu_check.py) runs its whole code path on tiny pipelines on CPU, so that on a
GPU machine only the sizes change."""

import importlib.util
import json
from pathlib import Path

import torch


def _script():
    path = Path(__file__).parents[1] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gpu_check_times_every_run_on_tiny_pipelines(tmp_path, default_run_options):
    gpu_check = _script()
    rows = gpu_check.check(tiny=True, device=torch.device("cpu"), dtype=torch.float32, extra_steps=1)
    assert [(r["architecture"], r["method"]) for r in rows] == [(a, m) for a, m, _ in gpu_check.RUNS]
    assert all("error" not in r for r in rows), [r.get("error") for r in rows]
    for r in rows:
        assert (r["setup_s"] > 0 and "step_s" in r) if r["method"] in gpu_check.ITERATIVE else r["total_s"] > 0
    text = gpu_check.table(rows, "cpu")
    assert text.count("\n| ") == len(rows) + 1 and json.dumps(rows)
