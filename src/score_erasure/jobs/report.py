"""`score report`: re-render any report's HTML from its report.json (after a template change, or a lost html)."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ValidationError

from score_erasure.attacks.report import ATTACK_REPORT_FORMAT, AttackReport, render_attack_html
from score_erasure.certify.report import CERTIFICATE_FORMAT, CertificateReport, render_certificate_html
from score_erasure.errors import UserError
from score_erasure.evaluation.report import REPORT_FORMAT, Report, render_report_html
from score_erasure.io import atomic_write_text

RENDERERS = {REPORT_FORMAT: (Report, render_report_html),
             ATTACK_REPORT_FORMAT: (AttackReport, render_attack_html),
             CERTIFICATE_FORMAT: (CertificateReport, render_certificate_html)}


def rerender(folder: Path) -> Path:
    """Re-render FOLDER/report.html from FOLDER/report.json, whichever command wrote it."""
    folder = Path(folder)
    if (folder / "results.json").is_file() and not (folder / "report.json").is_file():
        raise UserError(f"'{folder}' is a `score bench` folder: its table is results.md (written by the bench); "
                        f"each method's report is in its own folder: `score report {folder}/METHOD`")
    path = folder / "report.json"
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise UserError(f"no readable report.json in '{folder}' ({exc.strerror or exc}); run `score evaluate`, "
                        "`score attack` or `score certify` into it first") from exc
    except ValueError as exc:
        raise UserError(f"'{path}' is not valid JSON ({exc}); rerun the command that wrote it") from exc
    kind = data.get("format") if isinstance(data, dict) else None
    if kind not in RENDERERS:
        raise UserError(f"'{path}' is not a report this version renders (format {kind!r}; known: "
                        f"{', '.join(RENDERERS)})")
    schema, render = RENDERERS[kind]
    try:
        report: BaseModel = schema.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"'{path}' is a damaged {kind} report: {exc.errors()[0]['msg']}") from exc
    out = folder / "report.html"
    atomic_write_text(out, render(report, folder))
    return out
