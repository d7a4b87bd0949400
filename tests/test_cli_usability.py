"""What a new user meets on the command line (issue #22): logs, listings, names, options, units."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from score_erasure.methods import METHODS
from score_erasure.testing import FAST_CONFIGS
from score_erasure.testing import run_cli as run


def _score(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    """The `score` command in a child process whose stdout and stderr are pipes, as in `score ... > log 2>&1`."""
    return subprocess.run([sys.executable, "-m", "score_erasure", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, cwd=cwd, timeout=300)


def test_a_long_command_in_a_log_prints_progress_lines_and_whole_paths(tiny_model_dir, tmp_path):
    out = tmp_path / ("a-folder-name-long-enough-that-the-path-passes-eighty-columns-" + "x" * 30) / "erased"
    config = tmp_path / "fast.json"
    config.write_text(json.dumps(FAST_CONFIGS["esd-x"]))
    done = _score("erase", "--method", "esd-x", "-m", tiny_model_dir, "-c", "star", "--config", config, "--out", out,
                  env={"SCORE_PROGRESS_EVERY": "0"})
    assert done.returncode == 0, done.stderr
    progress = [line for line in done.stderr.splitlines() if "esd (xattn):" in line]
    assert progress and progress[-1].split("esd (xattn): ")[1].startswith("2/2"), done.stderr
    assert any(f"-> {out}" in line for line in done.stdout.splitlines()), done.stdout  # the path whole, on its line
    for stream in (done.stdout, done.stderr):
        assert "" not in stream.splitlines(), stream  # no blank lines
    help_text = _score("--help").stdout
    assert "--gradient-checkpointing" in help_text and "--no-gradient-checkpointing" in help_text  # not cut


def test_the_python_api_prints_no_library_chatter():
    done = subprocess.run([sys.executable, "-c", "import score_erasure.models, score_erasure.jobs.bench"],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_methods_shows_every_default_whole_and_as_json(capsys, monkeypatch):
    code, out, _ = run(capsys, monkeypatch, "methods", "score")
    assert code in (0, None)
    for key, value in METHODS["score"].config().model_dump(mode="json").items():
        assert f"{key} = {json.dumps(value)}" in out, key
    code, out, _ = run(capsys, monkeypatch, "methods", "--json")
    data = json.loads(out)
    assert set(data) == set(METHODS) and data["score-robust"]["defaults"]["iterations"] == 200
    code, out, _ = run(capsys, monkeypatch, "attacks", "inversion", "--json")
    assert list(json.loads(out)) == ["inversion"] and json.loads(out)["inversion"]["defaults"]["iterations"] == 200


def test_concept_names_match_in_any_case_and_near_misses_are_named(capsys, monkeypatch, tiny_model_dir, tmp_path):
    from score_erasure.evaluation.protocol import resolve_protocol
    from score_erasure.models import resolve_model

    world = resolve_model("embedded")
    assert world.spec(["Star"]).concepts == ["star"] and world.spec(["zorblat"]).concepts == ["Zorblat"]
    assert resolve_protocol(None, None, "STAR").canonical("STAR") == "star"
    code, _, err = run(capsys, monkeypatch, "evaluate", "-c", "strar", "--out", tmp_path / "e")
    assert code == 2 and "did you mean 'star'?" in err and "--task" not in err
    code, _, err = run(capsys, monkeypatch, "erase", "--method", "uce", "-c", "Zorblatt", "--out", tmp_path / "x")
    assert code == 2 and "did you mean 'Zorblat'?" in err


def test_options_are_uniform_and_usage_names_the_positionals(capsys, monkeypatch):
    _, out, _ = run(capsys, monkeypatch, "demo", "--help")
    assert "-c" in out
    _, out, _ = run(capsys, monkeypatch, "merge", "--help")
    assert "-m" in out and "{DELTA}" in out
    _, out, _ = run(capsys, monkeypatch, "report", "--help")
    assert "{FOLDER}" in out


def test_negative_seeds_are_refused(capsys, monkeypatch, tmp_path):
    code, _, err = run(capsys, monkeypatch, "generate", "-p", "a star", "--seed", "-1", "--out", tmp_path)
    assert code == 2 and "--seed" in err and "greater than or equal to 0" in err and not any(tmp_path.iterdir())


def test_generate_saves_the_judge_verdicts(capsys, monkeypatch, tiny_model_dir, tmp_path):
    code, _, _ = run(capsys, monkeypatch, "generate", "-m", tiny_model_dir, "-p", "a star", "-n", "2", "--steps", "2",
                     "--judge", "--out", tmp_path)
    verdicts = json.loads((tmp_path / "generate.json").read_text())["verdicts"]
    assert code in (0, None) and [v["seed"] for v in verdicts] == [0, 1]
    assert set(verdicts[0]) == {"prompt", "seed", "shape", "colour", "style", "fire"}


def test_kid_has_its_unit_and_a_base_rate_of_zero_is_called_uninformative(capsys, monkeypatch, tiny_model_dir,
                                                                         tmp_path):
    from score_erasure.testing import small_protocol_data

    protocol = tmp_path / "p.json"
    protocol.write_text(json.dumps(small_protocol_data("object", "star")))
    code, out, _ = run(capsys, monkeypatch, "evaluate", "-m", tiny_model_dir, "--base", tiny_model_dir, "-c", "star",
                       "--protocol", protocol, "--out", tmp_path / "e", "--no-cache")
    assert code in (0, None) and "kid (raw MMD², judge features)" in out
    report = json.loads((tmp_path / "e" / "report.json").read_text())
    # A random tiny model never draws a star: acc_e of 0 says nothing about erasure, and the report says so.
    assert report["base_metrics"]["acc_e"]["value"] == 0
    assert any(note.startswith("acc_e is uninformative") for note in report["notes"])
    assert "uninformative" in (tmp_path / "e" / "report.html").read_text()
    assert Path(tmp_path / "e" / "report.json").stat().st_mode & 0o044  # readable by group and others


@pytest.mark.parametrize("command", [
    ["erase", "--method", "uce", "-c", "star"],
    ["evaluate", "-c", "star"],
    ["attack", "--attack", "paraphrase", "-c", "star"],
    ["certify", "-c", "star"],
    ["bench", "-c", "star"],
    ["generate", "-p", "a star"],
    ["leaderboard", "--methods", "uce"],
])
def test_an_unwritable_out_folder_is_one_line_before_any_work(capsys, monkeypatch, command):
    code, out, err = run(capsys, monkeypatch, *command, "--out", "/proc/forbidden/x")
    assert code == 2 and "cannot write to the output folder '/proc/forbidden/x'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_two_commands_cannot_write_one_folder_and_a_stale_lock_is_taken_over(capsys, monkeypatch, tiny_model_dir,
                                                                            tmp_path):
    """A second command into a folder that a running command holds is refused; a lock left by a killed process
    (its pid gone) does not block the folder."""
    import subprocess

    from score_erasure.io import LOCK

    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(["sleep", "60"])
    try:
        (out / LOCK).write_text(json.dumps({"pid": holder.pid, "command": "score erase ...", "since": "now"}))
        code, _, err = run(capsys, monkeypatch, "generate", "-m", tiny_model_dir, "-p", "a star", "-n", "1",
                           "--steps", "1", "--out", out)
        assert code == 2 and f"is being written by another command (pid {holder.pid}" in err
        assert not (out / "grid.png").exists()
    finally:
        holder.kill()
        holder.wait()
    code, _, err = run(capsys, monkeypatch, "generate", "-m", tiny_model_dir, "-p", "a star", "-n", "1", "--steps",
                       "1", "--out", out)  # the holder is gone: its lock is stale
    assert code in (0, None), err
    assert (out / "grid.png").is_file() and not (out / LOCK).exists()  # released when done


def test_a_folder_holding_another_run_is_refused_unless_overwrite_or_resume(capsys, monkeypatch, tiny_model_dir,
                                                                           tmp_path):
    """A finished (or checkpointed) run is never overwritten by accident: `--overwrite` replaces it, `--resume`
    continues a run of the same kind and the same erasure, anything else is one line naming both ways in."""
    gen = ["generate", "-m", tiny_model_dir, "-p", "a star", "-n", "1", "--steps", "1", "--out", tmp_path / "g"]
    assert run(capsys, monkeypatch, *gen)[0] in (0, None)
    before = (tmp_path / "g" / "generate.json").read_text()
    code, _, err = run(capsys, monkeypatch, *gen)
    assert code == 2 and "already holds a run (generate.json); pass --overwrite to replace it, or" in err
    assert len(err.strip().splitlines()) == 1 and (tmp_path / "g" / "generate.json").read_text() == before
    (tmp_path / "g" / "generate.json").write_text(before.replace('"steps": 1', '"steps": 99'))  # a stale record
    assert run(capsys, monkeypatch, *gen, "--overwrite")[0] in (0, None)
    assert '"steps": 1,' in (tmp_path / "g" / "generate.json").read_text()  # written anew

    erase = ["erase", "-m", tiny_model_dir, "-c", "star", "--out", tmp_path / "e"]
    assert run(capsys, monkeypatch, *erase, "--method", "uce")[0] in (0, None)
    code, _, err = run(capsys, monkeypatch, *erase, "--method", "uce")
    assert code == 2 and "pass --overwrite to replace it, --resume to continue it, or choose another --out" in err
    assert run(capsys, monkeypatch, *erase, "--method", "uce", "--resume")[0] in (0, None)
    code, _, err = run(capsys, monkeypatch, *erase, "--method", "esd-x", "--resume")
    assert code == 2 and "holds another erasure (erase.json: its method, config differ" in err
    code, _, err = run(capsys, monkeypatch, "evaluate", "-c", "star", "--out", tmp_path / "e")
    assert code == 2 and "(erase.json); pass --overwrite to replace it, or" in err  # no --resume across kinds
    assert not (tmp_path / "e" / "report.json").exists()


def test_listing_loads_no_model_library():
    """`score methods` and `score attacks` read the registries only: no diffusers, transformers or peft import
    (they took about 7 s before; the heavy libraries are imported where a pipeline is driven)."""
    script = ("import sys; from score_erasure.cli import main; sys.argv = ['score', 'methods', '--json']\n"
              "try:\n    main()\nexcept SystemExit:\n    pass\n"
              "sys.argv = ['score', 'attacks', '--json']\n"
              "try:\n    main()\nexcept SystemExit:\n    pass\n"
              "print(sorted(m for m in ('diffusers', 'transformers', 'peft') if m in sys.modules), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0 and done.stderr.strip().splitlines()[-1] == "[]", done.stderr
