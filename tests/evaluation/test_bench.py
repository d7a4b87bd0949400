"""`bench`: methods found by name, all evaluated against one base; a failing method is a row, not a crash."""

import json

import pytest
import torch
from pydantic import BaseModel, ConfigDict

from score_erasure.errors import UserError
from score_erasure.jobs import bench as bench_mod
from score_erasure.jobs.bench import bench, method_registry
from score_erasure.methods import METHODS, Method


def _broken(denoiser, spec, config, **_):
    raise RuntimeError("loss is NaN at step 3")


def _add_noise(denoiser, spec, config, **_):
    """Stands in for an erasure: perturbs the network, in place."""
    assert spec.concepts == ["star"]
    with torch.no_grad():
        for p in denoiser.network.parameters():
            p.add_(0.05 * torch.randn_like(p))


class NoConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


@pytest.fixture
def methods_module(monkeypatch):
    """Two toy methods in the registry, as a new method module would add them."""
    monkeypatch.setitem(METHODS, "broken", Method("broken", _broken, NoConfig, "fine-tune", "always fails"))
    monkeypatch.setitem(METHODS, "noise", Method("noise", _add_noise, NoConfig, "weight-edit", "random weights"))


def test_registry_has_none_and_every_method_of_the_registry(methods_module):
    assert list(method_registry()) == ["none", *METHODS]
    assert {"broken", "noise", "score", "uce"} <= set(method_registry())


def test_bench_reports_every_method_and_survives_a_failure(methods_module, tiny_model_dir, small_protocol, tmp_path):
    out = tmp_path / "bench"
    rows = bench(str(tiny_model_dir), "star", ["none", "broken", "noise"], out, task="object",
                 protocol_path=small_protocol("object", "star"), cache_dir=tmp_path / "cache",
                 command="score bench --concept star --methods none,broken,noise")
    assert [(r.method, r.status) for r in rows] == [("none", "ok"), ("broken", "failed"), ("noise", "ok")]
    assert rows[1].error == "RuntimeError: loss is NaN at step 3"
    assert "loss is NaN" in (out / "broken" / "error.txt").read_text()
    none, noise = rows[0].metrics, rows[2].metrics
    assert none["fid"]["value"] == pytest.approx(0, abs=1e-6) and noise["fid"]["value"] > 0
    table = (out / "results.md").read_text()
    assert "score bench --concept star --methods none,broken,noise" in table
    assert "| broken |" in table and "failed: RuntimeError: loss is NaN at step 3" in table
    results = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in results["rows"]] == ["none", "broken", "noise"] and results["protocol_hash"]
    assert (out / "results.png").stat().st_size > 0
    assert (out / "none" / "report.html").is_file() and (out / "noise" / "report.json").is_file()


def test_resume_keeps_finished_rows_and_reruns_changed_ones(methods_module, tiny_model_dir, small_protocol, tmp_path,
                                                            monkeypatch):
    out, calls = tmp_path / "bench", []
    kwargs = dict(task="object", protocol_path=small_protocol("object", "star"), cache_dir=tmp_path / "cache")
    first = bench(str(tiny_model_dir), "star", ["noise"], out, **kwargs)
    monkeypatch.setattr(bench_mod, "_run_method", lambda name, *a, **k: calls.append(name) or first[0])
    again = bench(str(tiny_model_dir), "star", ["noise", "broken"], out, resume=True, **kwargs)
    assert calls == ["broken"]  # noise was finished; broken had failed, so it has no saved row
    assert again[0] == first[0]
    bench(str(tiny_model_dir), "star", ["noise"], out, resume=True, attacks=["paraphrase"], **kwargs)
    assert calls == ["broken", "noise"]  # another attack list: the saved row does not answer it
    with pytest.raises(UserError, match="already holds a run"):  # a finished bench is not redone by accident
        bench(str(tiny_model_dir), "star", ["noise"], out, **kwargs)
    bench(str(tiny_model_dir), "star", ["noise"], out, overwrite=True, **kwargs)
    assert calls == ["broken", "noise", "noise"]  # with --overwrite (no --resume) everything runs


def test_unknown_method_lists_the_valid_ones(tmp_path):
    with pytest.raises(UserError, match="unknown method 'esdx'; choose one or more of: none"):
        bench("embedded", "star", ["none", "esdx"], tmp_path, task="object")


def test_markdown_escapes_pipes_in_errors():
    rows = [bench_mod.BenchRow("x", "failed", error="ValueError: a|b")]
    meta = {"task": "object", "concept": "star", "model": "m", "command": "c", "protocol": "p",
            "protocol_hash": "0" * 64, "base_hash": "1" * 64, "seconds": 1.0}
    assert "a\\|b" in bench_mod.results_markdown(rows, meta)


def test_a_variant_is_a_method_with_its_config_overridden(tiny_model_dir, small_protocol, tmp_path):
    out = tmp_path / "bench"
    rows = bench(str(tiny_model_dir), "star", ["none"], out, task="object",
                 protocol_path=small_protocol("object", "star"), cache_dir=tmp_path / "cache",
                 variants={"uce-tail": ("uce", {"tokens": "tail", "erase_scale": 2.0})})
    assert [(r.method, r.status) for r in rows] == [("none", "ok"), ("uce-tail", "ok")]
    assert rows[1].metrics["fid"]["value"] > 0 and rows[1].peak_rss_mb > 0
    results = json.loads((out / "results.json").read_text())
    assert results["variants"] == {"uce-tail": {"method": "uce", "config": {"tokens": "tail", "erase_scale": 2.0}}}
    with pytest.raises(UserError, match="already a method's name"):
        bench(str(tiny_model_dir), "star", [], tmp_path / "b", variants={"uce": ("uce", {})})
    with pytest.raises(UserError, match="uce"):
        bench(str(tiny_model_dir), "star", [], tmp_path / "c", variants={"x": ("uce", {"no_such_field": 1})})


def test_variant_flag_parsing(tmp_path):
    from score_erasure.cli.evaluation import parse_variant

    (tmp_path / "a.toml").write_text("adversarial = false\n")
    assert parse_variant(f"no-adv=score:{tmp_path / 'a.toml'}") == ("no-adv", ("score", {"adversarial": False}))
    assert parse_variant("plain=esd-u") == ("plain", ("esd-u", {}))
    with pytest.raises(UserError, match="LABEL=METHOD:CONFIG"):
        parse_variant("score")


def test_a_saved_row_is_keyed_by_the_resolved_config():
    """A changed default (or override) must rerun a row under --resume: the key holds the whole config."""
    from score_erasure.jobs.bench import method_config

    default = method_config("uce", None)
    assert default["lamb"] == 0.5 and default == method_config("uce-tail", ("uce", {}))
    assert method_config("uce-tail", ("uce", {"lamb": 0.1}))["lamb"] == 0.1
    assert method_config("none", None) is None
