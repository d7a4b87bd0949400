"""`score leaderboard` on tiny random models: every v2 column, the many-concepts curve, resuming, the docs section."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from score_erasure.errors import UserError
from score_erasure.jobs import bench as bench_mod
from score_erasure.jobs import leaderboard as lb
from score_erasure.jobs.leaderboard_page import separations
from score_erasure.toyworld import protocols


@pytest.fixture
def small_sets(tmp_path):
    """The packaged concept sets cut to k = 1 and 2, two prompts a side, two seeds, two steps."""
    data = protocols.build_sets()
    data["sets"] = {k: {**s, "erased": s["erased"][:2], "kept": s["kept"][:3]} for k, s in data["sets"].items()
                    if k in ("1", "2")}
    data["seeds"], data["sampling"]["steps"] = [0, 1], 2
    path = tmp_path / "sets.json"
    path.write_text(json.dumps(data))
    return path


def test_each_shipped_model_has_its_own_docs_section(tmp_path):
    start, end = lb.docs_markers("embedded-ar")
    assert lb.docs_markers("embedded") == (lb.DOCS_START, lb.DOCS_END) != (start, end)
    docs = tmp_path / "results.md"
    docs.write_text(f"{lb.DOCS_START}\nsd\n{lb.DOCS_END}\n{start}\nold\n{end}\n")
    lb.include_in_docs(docs, "new", start, end)
    assert docs.read_text() == f"{lb.DOCS_START}\nsd\n{lb.DOCS_END}\n{start}\nnew\n{end}\n"


def test_leaderboard_writes_every_v2_column_and_resumes(tiny_model_dir, small_protocol, small_sets, tmp_path,
                                                        monkeypatch):
    docs = tmp_path / "results.md"
    docs.write_text(f"# Results\n\n{lb.DOCS_START}\nold table\n{lb.DOCS_END}\n\nafter\n")
    kwargs = dict(suite=(("object", "star"),), attacks=("paraphrase",), certify={"n": 8, "folds": 2},
                  sizes=(1, 2), use_cache=False, protocol_paths={"object": small_protocol("object", "star")},
                  sets_path=small_sets, docs=docs)
    record = lb.leaderboard(str(tiny_model_dir), ["uce"], tmp_path / "lb", **kwargs)
    rows = record["tasks"]["object/star"]
    assert [(r["method"], r["status"]) for r in rows] == [("none", "ok"), ("uce", "ok")]
    for column in ("acc_c", "acc_n", "h_rob", "fid_ratio", "fid_floor", "asr_paraphrase", "mi_nats"):
        assert column in rows[1]["metrics"], column
    assert [(p["method"], p["k"], p["status"]) for p in record["curves"]] == [("uce", 1, "ok"), ("uce", 2, "ok")]
    assert record["curves"][1]["concepts"] == ["star", "Zorblat"]
    assert set(record["curves"][0]["metrics"]) == {"acc_e", "acc_s", "base_acc_e", "fid"}
    table = (tmp_path / "lb" / "leaderboard.md").read_text()
    assert "#### object/star" in table and "Differences beyond the intervals" in table and "| uce | 2 |" in table
    text = docs.read_text()
    assert "old table" not in text and table.strip() in text and text.endswith(f"{lb.DOCS_END}\n\nafter\n")
    assert "<table" in (tmp_path / "lb" / "leaderboard.html").read_text()

    def never(*args, **kwargs):
        raise AssertionError("a finished row was run again")

    monkeypatch.setattr(bench_mod, "_run_method", never)
    monkeypatch.setattr(lb, "score_set", never)
    again = lb.leaderboard(str(tiny_model_dir), ["uce"], tmp_path / "lb", **kwargs)
    assert again["tasks"] == record["tasks"] and again["curves"] == record["curves"]

    (tmp_path / "lb" / "many" / "uce" / "k2.json").unlink()  # as if the run were still going
    partial = lb.leaderboard(str(tiny_model_dir), ["uce"], tmp_path / "lb", **{**kwargs, "docs": None},
                             tables_only=True)
    assert partial["tasks"] == record["tasks"] and partial["curves"] == record["curves"][:1]
    assert "Tables only" in (tmp_path / "lb" / "partial" / "leaderboard.md").read_text()
    without_curve = lb.leaderboard(str(tiny_model_dir), ["uce"], tmp_path / "lb",
                                   **{**kwargs, "docs": None, "sizes": ()}, tables_only=True)
    assert without_curve["curves"] == []  # `--sets ''` leaves saved points out of the tables


def test_none_is_not_a_method_of_the_leaderboard(tmp_path):
    with pytest.raises(UserError, match="always the first row"):
        lb.leaderboard("embedded", ["none", "uce"], tmp_path)


def test_separations_are_the_pairs_whose_intervals_do_not_overlap():
    def row(method, value, low, high):
        return {"method": method, "metrics": {"h": {"value": value, "ci_low": low, "ci_high": high},
                                              "fid_ratio": {"value": value, "ci_low": low, "ci_high": high}}}

    rows = [row("a", 0.9, 0.85, 0.95), row("b", 0.5, 0.4, 0.6), row("c", 0.8, 0.55, 0.9)]
    found = separations(rows, ("h", "fid_ratio"))
    assert found == ["h: a 0.9 over b 0.5", "fid_ratio: b 0.5 over a 0.9"]  # lower fid_ratio is better
    rows.append(row("d", 0.1, 0.0, 0.2))
    assert separations(rows, ("h",)) == ["h: a 0.9 over b 0.5, d 0.1", "h: c 0.8 over d 0.1", "h: b 0.5 over d 0.1"]
    assert separations(rows[:1] + rows[3:] + rows[1:2], ("h",)) == ["h: a 0.9 over every other row",
                                                                     "h: b 0.5 over d 0.1"]


def test_a_run_of_the_concept_sets_alone_names_no_attack_and_costs_its_curves():
    from score_erasure.jobs.leaderboard_page import leaderboard_markdown

    metric = {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6}
    point = {"method": "uce", "k": 1, "concepts": ["Zorblat"], "status": "ok", "error": None, "erase_seconds": 1.0,
             "seconds": 30.0, "metrics": {"acc_e": metric, "acc_s": metric, "fid": metric, "base_acc_e": metric}}
    text = leaderboard_markdown({"command": "score leaderboard --tasks ''", "model": "embedded",
                                 "attacks": ["unlearndiff"], "certify": False, "seconds": 30.0,
                                 "compute": {"threads": 1}, "tasks": {}, "curves": [point]})
    assert "attacks" not in text.splitlines()[0]
    assert "| method | concept sets s | total s |\n|---|---|---|\n| uce | 30 | 30 |" in text


def test_the_cost_table_gives_each_row_its_seconds_erase_seconds_and_peak_memory():
    from score_erasure.jobs.leaderboard_page import leaderboard_markdown

    metric = {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0}
    rows = [{"method": "uce", "status": "ok", "error": None, "seconds": 612.4, "erase_seconds": 3.2,
             "peak_rss_mb": 901.6, "metrics": {"acc_e": metric}},
            {"method": "mace", "status": "ok", "error": None, "seconds": 700.0, "erase_seconds": 40.0,
             "peak_rss_mb": None, "metrics": {"acc_e": metric}}]
    text = leaderboard_markdown({"command": "", "model": "embedded", "attacks": [], "certify": False,
                                 "seconds": 1312.4, "compute": {"threads": 1}, "tasks": {"object/star": rows},
                                 "curves": []})
    assert "| uce | 612 / 3 / 902 | 0 | 612 |" in text
    assert "| mace | 700 / 40 / - | 0 | 700 |" in text  # a peak not measured alone is left blank


def test_an_autoregressive_model_gets_every_column_but_the_curve(small_protocol, tmp_path, monkeypatch):
    import dataclasses

    from score_erasure.methods import METHODS
    from score_erasure.testing import tiny_janus_pipeline

    monkeypatch.setitem(METHODS, "esd-ar", dataclasses.replace(METHODS["esd-ar"], preset={"iterations": 2}))
    tiny_janus_pipeline(0).save_pretrained(tmp_path / "janus")
    record = lb.leaderboard(str(tmp_path / "janus"), ["esd-ar"], tmp_path / "lb", suite=(("object", "star"),),
                            attacks=("paraphrase",), certify={"n": 8, "folds": 2}, sizes=(), use_cache=False,
                            protocol_paths={"object": small_protocol("object", "star")})
    rows = record["tasks"]["object/star"]
    assert [(r["method"], r["status"]) for r in rows] == [("none", "ok"), ("esd-ar", "ok")], rows
    for column in ("acc_e", "acc_c", "acc_n", "h_rob", "fid_ratio", "asr_paraphrase", "mi_nats"):
        assert column in rows[1]["metrics"], column


def test_tasks_in_two_processes_give_the_rows_of_one(tiny_model_dir, small_protocol, tmp_path, capfd):
    """`jobs=2` runs each task in a process of its own (spawned, at this process's thread count): the same rows,
    number for number, as one process, and the parent's tables hold them in the suite's order."""
    kwargs = dict(suite=(("object", "star"), ("unsafe", "fire")), attacks=("paraphrase",), certify=None, sizes=(),
                  use_cache=False, protocol_paths={"object": small_protocol("object", "star"),
                                                   "unsafe": small_protocol("unsafe", "fire")})
    serial = lb.leaderboard(str(tiny_model_dir), ["uce"], tmp_path / "one", **kwargs)
    capfd.readouterr()
    both = lb.leaderboard(str(tiny_model_dir), ["uce"], tmp_path / "two", jobs=2, **kwargs)
    log = capfd.readouterr().err
    assert "in 2 processes" in log and "] unsafe/fire: " in log and "] object/star: " in log  # each worker's lines
    assert list(both["tasks"]) == ["object/star", "unsafe/fire"]
    for name, rows in serial["tasks"].items():
        assert [(r["method"], r["status"]) for r in both["tasks"][name]] == [("none", "ok"), ("uce", "ok")]
        assert [r["metrics"] for r in both["tasks"][name]] == [r["metrics"] for r in rows], name
    assert (tmp_path / "two" / "unsafe" / "uce" / "row.json").is_file()


_ORPHAN_PARENT = """
import multiprocessing, os, sys, time
from score_erasure.jobs.leaderboard import exit_with_parent

def child(poll):
    exit_with_parent(poll)
    time.sleep(60)

if __name__ == "__main__":
    proc = multiprocessing.get_context("spawn").Process(target=child, args=(0.05,))
    proc.start()
    with open(sys.argv[1], "w") as out:
        out.write(str(proc.pid))
    os._exit(0)  # as a killed parent: no join, no terminate
"""


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_a_worker_ends_when_its_parent_is_killed(tmp_path):
    """A leaderboard stopped with `kill` must not leave its spawned workers running (seen in session 20: both
    kept drawing for minutes after their parent was gone)."""
    script = tmp_path / "parent.py"
    script.write_text(_ORPHAN_PARENT)
    subprocess.run([sys.executable, str(script), str(tmp_path / "pid")], stdout=subprocess.DEVNULL, timeout=60,
                   check=True)
    pid = int((tmp_path / "pid").read_text())
    deadline = time.time() + 10
    while _alive(pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(pid), "the worker outlived its parent"


def _alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie, reaped by nobody in a container, counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False
