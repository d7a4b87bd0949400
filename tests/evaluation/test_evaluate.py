"""`evaluate` end to end on tiny random models: the report's schema, cache reuse, and one-line errors."""

import json

import pytest

from score_erasure.errors import UserError
from score_erasure.evaluation.report import Report, load_report
from score_erasure.jobs.evaluate import evaluate

ACCURACY = {"acc_e", "acc_g", "acc_s", "h", "acc_c", "acc_n"}  # acc_c, acc_n: a format-2 protocol
METRICS = ACCURACY | {"fid", "kid", "ssim", "psnr", "fid_floor", "kid_floor", "ssim_floor", "fid_ratio", "kid_ratio",
                      "ssim_ratio"}


@pytest.fixture
def run(tmp_path, small_protocol):
    protocol = small_protocol("object", "star")

    def go(model, base, out="out", **kwargs):
        return evaluate(str(model), "star", tmp_path / out, task="object", base=str(base), protocol_path=protocol,
                        cache_dir=tmp_path / "cache", show_progress=False, **kwargs)

    return go


def test_report_json_schema(run, tiny_model_dir, other_model_dir, tmp_path):
    report = run(other_model_dir, tiny_model_dir)
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert Report.model_validate(data) == report == load_report(tmp_path / "out")
    assert set(data["metrics"]) == METRICS and set(data["base_metrics"]) == ACCURACY
    for metric in data["metrics"].values():
        assert set(metric) == {"value", "ci_low", "ci_high"} and metric["ci_low"] <= metric["ci_high"]
    for key in ("protocol_hash", "model_hash", "base_hash", "config", "seeds", "versions", "seconds"):
        assert data[key] not in (None, "", {}, [])
    assert data["model_hash"] != data["base_hash"] and data["seeds"] == [0, 1]
    assert data["config"]["judge"]["name"] == "world" and data["config"]["sampling"]["steps"] == 2
    assert data["groups"]["target"][0]["prompt"] == "a star"
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2 * 14 + 1  # every strip, base and evaluated, and a plot
    assert "Look-alikes (acc_n" in html and "x floor" not in html


def test_the_floor_is_the_base_against_itself_at_other_seeds(run, tiny_model_dir, other_model_dir):
    """fid_ratio is fid over the base's own fid at other seeds: a model that draws nothing like the base is many
    floors away; the base itself is at 0."""
    report = run(other_model_dir, tiny_model_dir)
    m = report.metrics
    assert m["fid_floor"].value > 0 and m["fid_ratio"].value == pytest.approx(m["fid"].value / m["fid_floor"].value)
    assert m["ssim_ratio"].value == pytest.approx((1 - m["ssim"].value) / (1 - m["ssim_floor"].value), rel=1e-6)
    assert m["fid_ratio"].ci_low <= m["fid_ratio"].value <= m["fid_ratio"].ci_high
    same = run(tiny_model_dir, tiny_model_dir, out="same").metrics
    assert same["fid_ratio"].value == pytest.approx(0, abs=1e-6) and same["fid_floor"] == m["fid_floor"]


def test_rerun_uses_the_cache_and_a_second_model_reuses_the_base(run, tiny_model_dir, other_model_dir):
    first = run(other_model_dir, tiny_model_dir)
    images_per_model = sum(len(rows) for rows in first.groups.values()) * len(first.seeds)
    floor = len(first.groups["neutral"]) * len(first.seeds)  # the base's second draw
    assert first.cache == {"hits": 0, "generated": 2 * images_per_model + floor}
    again = run(other_model_dir, tiny_model_dir, out="again")
    assert again.cache == {"hits": 2 * images_per_model + floor, "generated": 0}
    assert again.metrics == first.metrics
    base_only = run(tiny_model_dir, tiny_model_dir, out="self")
    assert base_only.cache == {"hits": images_per_model + floor, "generated": 0}


def test_the_unmodified_model_has_no_drift(run, tiny_model_dir):
    report = run(tiny_model_dir, tiny_model_dir)
    assert report.metrics["fid"].value == pytest.approx(0, abs=1e-6)
    assert report.metrics["kid"].value == 0 and report.metrics["ssim"].value == pytest.approx(1)
    assert report.metrics["acc_e"] == report.base_metrics["acc_e"]


def test_unknown_task(tmp_path, tiny_model_dir):
    with pytest.raises(UserError, match="unknown task 'shapes'"):
        evaluate(str(tiny_model_dir), "star", tmp_path, task="shapes")


def test_concept_not_in_protocol(run, tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match="concept 'star' is not in"):
        evaluate(str(tiny_model_dir), "star", tmp_path / "a", task="unsafe")
    with pytest.raises(UserError, match="concept 'hexagon' is not in protocol"):
        evaluate(str(tiny_model_dir), "hexagon", tmp_path / "b", task="object")


def test_model_and_base_of_different_resolutions(run, tiny_model_dir, small_model_dir):
    with pytest.raises(UserError, match=r"makes \(32, 32\) images but base .* makes \(16, 16\)"):
        run(tiny_model_dir, small_model_dir)


def test_a_check_the_judge_cannot_read_fails_before_sampling(tmp_path, tiny_model_dir, small_protocol):
    path = small_protocol("object", "star")
    data = json.loads(path.read_text())
    data["concepts"]["star"]["retained"][0]["expect"][0]["value"] = "hexagon"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="unknown shape 'hexagon'"):
        evaluate(str(tiny_model_dir), "star", tmp_path / "out", protocol_path=path, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
