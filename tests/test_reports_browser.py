"""Every HTML report kind, opened in headless Chromium at 1280 px, fits the window: nothing overflows sideways.

Chromium comes from Debian's packages (`chromium-headless-shell`); `.ci/run` installs it and sets
SCORE_REQUIRE_BROWSER=1, so that in CI a missing browser fails instead of skipping.
"""

import json
import os
import re
import shutil
import subprocess

import pytest

from score_erasure.testing import small_protocol_data

WIDTH = 1280
BROWSER = shutil.which("chromium-headless-shell") or shutil.which("chromium")
pytestmark = pytest.mark.skipif(BROWSER is None and not os.environ.get("SCORE_REQUIRE_BROWSER"),
                                reason="no headless Chromium here (apt-get install chromium-headless-shell)")


def page_width(html_path) -> int:
    """The rendered page's scroll width at a 1280-pixel window (its layout width, overflow included)."""
    assert BROWSER, "SCORE_REQUIRE_BROWSER is set but no Chromium is installed"
    probe = html_path.with_name("width-probe.html")
    probe.write_text(html_path.read_text() + "<script>document.title = 'W=' + "
                     "document.documentElement.scrollWidth</script>")
    dom = subprocess.run([BROWSER, "--no-sandbox", "--disable-gpu", f"--window-size={WIDTH},900", "--dump-dom",
                          probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    probe.unlink()
    found = re.search(r"<title>W=(\d+)</title>", dom)
    assert found, dom[:500]
    return int(found.group(1))


@pytest.fixture(scope="module")
def reports(tmp_path_factory, tiny_model_dir):
    """One report of each kind, with long paths and prompts (what made them overflow)."""
    from score_erasure.jobs.attack import run_attack
    from score_erasure.jobs.certify import certify
    from score_erasure.jobs.evaluate import evaluate

    root = tmp_path_factory.mktemp("reports-with-a-rather-long-folder-name-as-real-runs-have-" + "x" * 40)
    data = small_protocol_data("object", "star", per_group=3, seeds=8)
    protocol = root / "object-star.json"
    protocol.write_text(json.dumps(data))
    model = str(tiny_model_dir)
    evaluate(model, "star", root / "evaluation", base=model, protocol_path=protocol, use_cache=False,
             show_progress=False)
    run_attack(model, "paraphrase", "star", root / "attack", base=model, protocol_path=protocol, use_cache=False,
               show_progress=False)
    certify(model, "star", root / "certificate", base=model, protocol_path=protocol, overrides={"n": 16, "folds": 2})
    return root


@pytest.mark.parametrize("kind", ["evaluation", "attack", "certificate"])
def test_a_report_fits_a_1280_pixel_window(reports, kind):
    assert page_width(reports / kind / "report.html") <= WIDTH


def test_the_probe_sees_an_overflow(tmp_path):
    """The check can fail: a page wider than the window is measured as such."""
    wide = tmp_path / "wide.html"
    wide.write_text(f'<html><body><div style="width: {WIDTH + 400}px">x</div></body></html>')
    assert page_width(wide) > WIDTH


def test_the_leaderboard_page_fits_a_1280_pixel_window(tmp_path):
    """The widest page: every method, task and column of benchmark v2, and the many-concepts table."""
    from score_erasure.jobs.leaderboard_page import leaderboard_html
    from score_erasure.provenance import provenance

    methods = ["none", "score", "score-robust", "ant", "esd-x", "esd-u", "esd", "uce", "dve"]
    columns = ["acc_e", "acc_g", "acc_s", "acc_c", "acc_n", "h", "h_rob", "fid", "fid_ratio", "asr_unlearndiff",
               "asr_inversion", "mi_nats"]
    metric = {"value": 0.123456, "ci_low": 0.012345, "ci_high": 0.987654}
    rows = [{"method": m, "status": "ok", "error": None, "seconds": 812.4,
             "metrics": {c: metric for c in columns}} for m in methods]
    curves = [{"method": m, "k": k, "concepts": ["star", "Zorblat", "striped", "red", "circle", "Mirelda",
                                                 "checkered", "blue", "heart", "Quenby", "outlined", "green"][:k],
               "status": "ok", "error": None, "erase_seconds": 140.0, "seconds": 200.0,
               "metrics": {n: metric for n in ("acc_e", "acc_s", "fid", "base_acc_e")}}
              for m in methods[1:] for k in (1, 2, 4, 8, 12)]
    record = {"command": "score leaderboard --out runs/leaderboard --docs docs/results.md", "model": "embedded",
              "methods": methods[1:], "attacks": ["unlearndiff", "inversion"], "certify": True, "seconds": 1234.0,
              "tasks": {t: rows for t in ("object/star", "style/striped", "character/Zorblat", "unsafe/fire")},
              "curves": curves, **provenance()}
    page = tmp_path / "leaderboard.html"
    page.write_text(leaderboard_html(record))
    assert page_width(page) <= WIDTH
