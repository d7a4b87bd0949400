"""The GPU check script (benchmarks/gpu_check.py) runs its whole code path on tiny pipelines on CPU, so that on a
GPU machine only the sizes change."""

import json

import torch


def test_the_gpu_check_times_every_run_on_tiny_pipelines(tmp_path, default_run_options, benchmark_script):
    gpu_check = benchmark_script("gpu_check")
    rows = gpu_check.check(tiny=True, device=torch.device("cpu"), dtype=torch.float32, extra_steps=1)
    assert [(r["architecture"], r["method"]) for r in rows] == [(a, m) for a, m, _ in gpu_check.RUNS]
    assert all("error" not in r for r in rows), [r.get("error") for r in rows]
    for r in rows:
        assert (r["setup_s"] > 0 and "step_s" in r) if r["method"] in gpu_check.ITERATIVE else r["total_s"] > 0
    text = gpu_check.table(rows, "cpu")
    assert text.count("\n| ") == len(rows) + 1 and json.dumps(rows)
