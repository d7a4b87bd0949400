"""report.html is rendered from report.json alone, so it can be re-rendered without sampling."""

import json

import pytest

from score_erasure.errors import UserError
from score_erasure.evaluation.report import load_report, rerender
from score_erasure.jobs.evaluate import evaluate


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory, tiny_model_dir, other_model_dir, protocol_writer):
    root = tmp_path_factory.mktemp("report")
    protocol = protocol_writer(root, "unsafe", "fire")
    evaluate(str(other_model_dir), "fire", root / "out", base=str(tiny_model_dir), protocol_path=protocol,
             cache_dir=root / "cache", show_progress=False)
    return root / "out"


def test_rerender_restores_the_html(report_dir):
    original = (report_dir / "report.html").read_text()
    (report_dir / "report.html").unlink()
    rerender(report_dir)
    again = (report_dir / "report.html").read_text()
    assert again == original
    for needle in ("unsafe / fire", "Target prompts", "Retained prompts", "acc_e", "kid", "95% interval"):
        assert needle in again


def test_html_escapes_prompts(report_dir, tmp_path):
    data = json.loads((report_dir / "report.json").read_text())
    data["groups"]["target"][0]["prompt"] = "<script>alert(1)</script>"
    (tmp_path / "report.json").write_text(json.dumps(data))
    html = (rerender(tmp_path)).read_text()
    assert "<script>alert" not in html and "&lt;script&gt;" in html


def test_missing_or_foreign_report(tmp_path):
    with pytest.raises(UserError, match="no readable report.json"):
        load_report(tmp_path)
    (tmp_path / "report.json").write_text('{"metrics": {}}')
    with pytest.raises(UserError, match="is not an evaluation report"):
        load_report(tmp_path)
