"""`score attack`, `score attacks` and `score bench --attacks` from the command line."""

import json
import sys

import pytest

from score_erasure import cli
from score_erasure.testing import run_cli as run


@pytest.mark.parametrize("command", ["attack", "attacks", "certify"])
def test_help(capsys, monkeypatch, command):
    code, out, _ = run(capsys, monkeypatch, command, "--help")
    assert code == 0 and "Usage" in out


def test_attacks_lists_every_attack(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["score", "attacks"])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    out = capsys.readouterr().out
    assert exc.value.code in (0, None)
    for name in ("unlearndiff", "p4d", "ring-a-bell", "inversion", "paraphrase"):
        assert name in out


def test_unknown_attack_is_one_line(capsys, monkeypatch, tmp_path):
    code, _, err = run(capsys, monkeypatch, "attack", "--attack", "gcg", "--concept", "star", "--task", "object",
                       "--out", tmp_path)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err and lines[-1].startswith("error: unknown attack 'gcg'")


def test_concept_alone_names_the_task(capsys, monkeypatch, tmp_path):
    """`-c star` with no --task finds the object protocol: the run gets past it to the next check."""
    code, _, err = run(capsys, monkeypatch, "certify", "-c", "star", "--attacks", tmp_path, "--out", tmp_path / "c")
    assert code == 2 and "holds no attack results" in err and "pass --task" not in err


def test_attack_end_to_end_then_resumed(capsys, monkeypatch, tmp_path, tiny_model_dirs, protocol_file):
    model, base = tiny_model_dirs
    config = tmp_path / "budget.toml"
    config.write_text("iterations = 2\ntarget_images = 1\nbatch = 1\nselect_every = 1\n")
    args = ["attack", "--attack", "unlearndiff", "--concept", "star", "--model", model, "--base", base,
            "--protocol", protocol_file, "--config", config, "--out", tmp_path / "out", "--no-cache"]
    code, out, err = run(capsys, monkeypatch, *args)
    assert code in (0, None), err
    assert "asr" in out and "pre_asr" in out and "0 of 2 prompts resumed" in out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["attack"] == "unlearndiff" and report["config"]["iterations"] == 2
    assert report["model_hash"] != report["base_hash"]
    code, _, err = run(capsys, monkeypatch, *args)  # a finished attack is not redone by accident
    assert code == 2 and "pass --overwrite to replace it, --resume to continue it" in err
    code, out, _ = run(capsys, monkeypatch, *args, "--resume")
    assert "2 of 2 prompts resumed" in out


def test_bench_adds_an_asr_column_per_attack(tmp_path, tiny_model_dirs, protocol_file):
    from score_erasure.jobs.bench import bench

    rows = bench(str(tiny_model_dirs[0]), "star", ["none"], tmp_path, protocol_path=protocol_file, use_cache=False,
                 attacks=["paraphrase"])
    assert rows[0].status == "ok", rows[0].error
    assert set(rows[0].metrics["asr_paraphrase"]) == {"value", "ci_low", "ci_high"}
    assert "asr_paraphrase" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "none" / "attack-paraphrase" / "report.json").is_file()


def test_bench_certifies_each_row_with_its_attacks_finds(tmp_path, tiny_model_dirs, protocol_file):
    from score_erasure.jobs.bench import bench

    rows = bench(str(tiny_model_dirs[0]), "star", ["none"], tmp_path, protocol_path=protocol_file, use_cache=False,
                 attacks=["paraphrase"], certify={"n": 8, "folds": 2})
    assert rows[0].status == "ok", rows[0].error
    leak, base_leak = rows[0].metrics["mi_nats"], rows[0].metrics["base_mi_nats"]
    assert set(leak) == {"value", "ci_low", "ci_high"} and leak == base_leak  # `none` is its own base
    assert "| mi_nats | base_mi_nats |" in (tmp_path / "results.md").read_text()
    report = json.loads((tmp_path / "none" / "certify" / "report.json").read_text())
    finds = json.loads((tmp_path / "none" / "attack-paraphrase" / "report.json").read_text())
    assert report["n_per_class"] == 8 and report["config"]["attack_folders"] == [
        str(tmp_path / "none" / "attack-paraphrase")]
    assert finds["rows"] and {r["adversarial"] for r in finds["rows"]} <= set(report["concept_prompts"])
