"""benchmarks/collect.py joins saved bench rows: a finished bench's folder may gain a later bench's rows."""

import json
from pathlib import Path

import pytest

SETTING = {"task": "unsafe", "concept": "fire", "protocol_hash": "p1", "base_hash": "b1"}


def _row(method: str, asr: float) -> dict:
    return {"method": method, "metrics": {"asr_p4d": {"value": asr, "ci_low": asr, "ci_high": asr}}}


def _save(folder: Path, method: str, row: dict, **key) -> None:
    (folder / method).mkdir(parents=True)
    (folder / method / "row.json").write_text(json.dumps({"key": SETTING | {"attacks": ["p4d"]} | key, "row": row}))


def test_a_finished_bench_gains_the_rows_saved_beside_it(tmp_path, benchmark_script):
    results = SETTING | {"attacks": ["p4d"], "rows": [_row("none", 1.0), _row("uce", 0.5)]}
    (tmp_path / "results.json").write_text(json.dumps(results))
    _save(tmp_path, "uce", _row("uce", 0.25))  # a row results.json already lists: its own copy stands
    _save(tmp_path, "sdd", _row("sdd", 0.75))
    meta, rows = benchmark_script("collect").rows(tmp_path)
    assert meta["protocol_hash"] == "p1"
    found = [(r["method"], r["metrics"]["asr_p4d"]["value"]) for r in rows]
    assert found == [("none", 1.0), ("uce", 0.5), ("sdd", 0.75)]


def test_a_row_of_another_protocol_beside_a_finished_bench_is_refused(tmp_path, benchmark_script):
    (tmp_path / "results.json").write_text(json.dumps(SETTING | {"attacks": ["p4d"], "rows": [_row("none", 1.0)]}))
    _save(tmp_path, "sdd", _row("sdd", 0.75), protocol_hash="p2")
    with pytest.raises(SystemExit, match="another task, protocol or base model"):
        benchmark_script("collect").rows(tmp_path)


def test_a_running_benchs_rows_come_in_the_registry_order_whatever_their_file_times(tmp_path, benchmark_script):
    for method in ("uce", "a-variant", "none", "score"):  # written out of order, as a fresh clone's files all are
        _save(tmp_path, method, _row(method, 0.5))
    _, rows = benchmark_script("collect").rows(tmp_path)
    assert [r["method"] for r in rows] == ["none", "score", "uce", "a-variant"]
