"""The evaluation commands: help, a run end to end, and one-line errors with a non-zero exit."""


import pytest

from score_erasure.testing import run_cli as run


def one_line_error(code, err, *needles):
    """Exit status 2 and the message as the last line of stderr (diffusers may draw loading bars before it)."""
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err and lines[-1].startswith("error:"), err
    assert sum(line.startswith("error:") for line in lines) == 1
    for needle in needles:
        assert needle in lines[-1], (needle, err)


@pytest.mark.parametrize("command", ["evaluate", "bench", "report", "protocol"])
def test_help(capsys, monkeypatch, command):
    code, out, _ = run(capsys, monkeypatch, command, "--help")
    assert code == 0 and "Usage" in out


def test_evaluate_prints_the_table_and_the_time(capsys, monkeypatch, tmp_path, tiny_model_dir, other_model_dir,
                                               small_protocol):
    monkeypatch.setenv("SCORE_CACHE", str(tmp_path / "cache"))
    code, out, err = run(capsys, monkeypatch, "evaluate", "--model", other_model_dir, "--base", tiny_model_dir,
                         "--concept", "star", "--protocol", small_protocol("object", "star"), "--out", tmp_path / "o")
    assert code in (0, None), err
    for needle in ("acc_e", "acc_g", "acc_s", "h", "fid", "kid", "ssim", "psnr", "95% interval", " s (",
                   "report.html"):
        assert needle in out
    code, out, _ = run(capsys, monkeypatch, "report", tmp_path / "o")
    assert code in (0, None) and "report.html" in out


def test_protocol_command(capsys, monkeypatch):
    code, out, _ = run(capsys, monkeypatch, "protocol", "object")
    assert code in (0, None) and "world-object" in out and "star" in out and "hash" in out


@pytest.mark.parametrize(("args", "needles"), [
    (["--task", "objects", "--concept", "star"], ["unknown task 'objects'", "object"]),
    (["--task", "object", "--concept", "hexagon"], ["concept 'hexagon' is not in protocol", "star"]),
    (["--protocol", "MISSING", "--concept", "star"], ["cannot read protocol file"]),
    (["--protocol", "BROKEN", "--concept", "star"], ["is not valid JSON"]),
])
def test_one_line_errors(capsys, monkeypatch, tmp_path, args, needles):
    (tmp_path / "broken.json").write_text("{nope")
    args = [str(tmp_path / "missing.json") if a == "MISSING" else str(tmp_path / "broken.json") if a == "BROKEN"
            else a for a in args]
    code, _, err = run(capsys, monkeypatch, "evaluate", *args, "--out", tmp_path / "o")
    one_line_error(code, err, *needles)


def test_resolution_mismatch_is_one_line(capsys, monkeypatch, tmp_path, tiny_model_dir, small_model_dir,
                                         small_protocol):
    code, _, err = run(capsys, monkeypatch, "evaluate", "--model", tiny_model_dir, "--base", small_model_dir,
                       "--concept", "star", "--protocol", small_protocol(), "--out", tmp_path / "o")
    one_line_error(code, err, "images but base", "same resolution")


def test_bench_unknown_method_and_report_without_json(capsys, monkeypatch, tmp_path):
    code, _, err = run(capsys, monkeypatch, "bench", "--task", "object", "--concept", "star", "--methods",
                       "none,esdx", "--out", tmp_path)
    one_line_error(code, err, "unknown method 'esdx'", "none")
    code, _, err = run(capsys, monkeypatch, "report", tmp_path / "nothing")
    one_line_error(code, err, "no readable report.json")
