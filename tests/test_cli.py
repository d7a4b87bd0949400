"""The `score` command: help, generation, and one-line errors for user mistakes."""

import json
import subprocess
import sys

import pytest

from score_erasure.testing import run_cli as run


@pytest.mark.parametrize("args", [["--help"], ["generate", "--help"], ["world", "--help"], ["world", "check", "--help"],
                                  ["demo", "--help"], ["world", "train", "--help"]])
def test_help(capsys, monkeypatch, args):
    code, out, _ = run(capsys, monkeypatch, *args)
    assert code == 0 and "Usage" in out


def _assert_one_line_error(code, err, *needles):
    assert code != 0
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err
    assert lines and lines[0].startswith("error:"), err
    text = " ".join(lines)
    for needle in needles:
        assert needle in text, (needle, err)


def test_missing_model_directory(capsys, monkeypatch, tmp_path):
    code, _, err = run(capsys, monkeypatch, "generate", "--model", str(tmp_path / "nope"), "-p", "a star",
                       "--out", str(tmp_path / "o"))
    _assert_one_line_error(code, err, "not found")


def test_corrupt_model_directory(capsys, monkeypatch, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text("{not json")
    code, _, err = run(capsys, monkeypatch, "generate", "--model", str(broken), "-p", "a star",
                       "--out", str(tmp_path / "o"))
    _assert_one_line_error(code, err, "could not load")


def test_directory_without_model_index(capsys, monkeypatch, tmp_path):
    code, _, err = run(capsys, monkeypatch, "world", "check", "--model", str(tmp_path))
    _assert_one_line_error(code, err, "model_index.json")


def test_unknown_hub_id_offline(capsys, monkeypatch, tmp_path):
    code, _, err = run(capsys, monkeypatch, "generate", "--model", "nobody-here/no-such-model-xyz", "-p", "a star",
                       "--out", str(tmp_path / "o"))
    _assert_one_line_error(code, err, "unknown model", "HF_HUB_OFFLINE")


def test_empty_prompt(capsys, monkeypatch, tmp_path):
    code, _, err = run(capsys, monkeypatch, "generate", "-p", "  ", "--out", str(tmp_path / "o"))
    _assert_one_line_error(code, err, "empty prompt")


def test_negative_n(capsys, monkeypatch, tmp_path):
    code, _, err = run(capsys, monkeypatch, "generate", "-p", "a star", "-n", "-2", "--out", str(tmp_path / "o"))
    _assert_one_line_error(code, err, "-n")


def test_generate_writes_images_grid_and_record(capsys, monkeypatch, tmp_path, saved_embedded):
    out = tmp_path / "gen"
    code, stdout, _ = run(capsys, monkeypatch, "generate", "--model", str(saved_embedded), "-p", "a red star",
                          "-p", "Zorblat", "-n", "2", "--steps", "3", "--out", str(out))
    assert code == 0, stdout
    assert (out / "grid.png").is_file()
    assert len(list((out / "images").rglob("*.png"))) == 4
    record = json.loads((out / "generate.json").read_text())
    assert record["seeds"] == [0, 1] and record["prompts"] == ["a red star", "Zorblat"]
    assert "torch" in record["versions"]


def test_console_script_reports_errors_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "score_erasure", "generate", "-p", "x", "-n", "0", "--out",
                           str(tmp_path)], capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and "Traceback" not in proc.stderr


@pytest.mark.parametrize(("text", "needle"), [("{not json", "--config"), ('{"unet_step": 5}', "unet_step")])
def test_train_config_errors(capsys, monkeypatch, tmp_path, text, needle):
    """A broken or misspelt training config stops before anything runs, naming the problem."""
    config = tmp_path / "config.json"
    config.write_text(text)
    code, _, err = run(capsys, monkeypatch, "world", "train", "--config", str(config), "--out", str(tmp_path / "r"))
    _assert_one_line_error(code, err, needle)
    assert not (tmp_path / "r").exists()
