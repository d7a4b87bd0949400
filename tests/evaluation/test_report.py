"""report.html is rendered from report.json alone, so it can be re-rendered without sampling."""

import json

import pytest

from score_erasure.errors import UserError
from score_erasure.evaluation.report import load_report
from score_erasure.jobs.evaluate import evaluate
from score_erasure.jobs.report import rerender


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


def test_every_report_kind_is_rerendered_and_a_bench_folder_is_named(report_dir, tmp_path):
    """`score report` renders evaluation, attack and certificate folders; a bench folder gets a one-line pointer."""
    from score_erasure.attacks.report import ATTACK_REPORT_FORMAT
    from score_erasure.certify.report import CERTIFICATE_FORMAT

    kinds = {}
    for kind in (ATTACK_REPORT_FORMAT, CERTIFICATE_FORMAT):
        folder = tmp_path / kind.split("/")[1]
        folder.mkdir()
        (folder / "report.json").write_text(json.dumps({"format": kind}))
        with pytest.raises(UserError, match="damaged .* report"):  # the schema of that kind is applied
            rerender(folder)
        kinds[kind] = folder
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "results.json").write_text("{}")
    with pytest.raises(UserError, match="`score bench` folder"):
        rerender(tmp_path / "bench")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "report.json").write_text('{"format": "something-else"}')
    with pytest.raises(UserError, match="not a report this version renders"):
        rerender(tmp_path / "odd")


def test_plots_keep_the_legend_off_the_bars_and_name_each_direction():
    """The legend stood over the last bar, and the certificate's axis read `mi_nats ()` (issue #22)."""
    from score_erasure.reporting import Metric, figure, figure_png, metric_bars

    m = Metric(value=0.1, ci_low=0.0, ci_high=0.2)
    fig, ax = figure(4, 3)
    metric_bars(ax, ["mi_nats", "fano_nats", "other"], {"base": {"mi_nats": m, "fano_nats": m},
                                                        "model": {"mi_nats": m, "fano_nats": m}})
    assert [t.get_text() for t in ax.get_xticklabels()] == ["mi_nats\n(lower)", "fano_nats\n(lower)", "other"]
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1  # beside the axes, not over them
    figure_png(fig)
