"""The certificate's report.json (a pydantic record) and report.html (rendered from it and the image strips)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from score_erasure import reporting
from score_erasure.certify.probes import Leakage
from score_erasure.reporting import Metric, RunHeader

CERTIFICATE_FORMAT = "score-erasure/certificate/1"
STRIP_IMAGES = 8


class ProbeRecord(BaseModel):
    mi_nats: Metric
    fano_nats: Metric
    accuracy: Metric
    cross_entropy: float


class SourceRecord(BaseModel):
    prompts: int
    images: int
    mi_nats: Metric | None
    base_mi_nats: Metric | None


class CertificateReport(RunHeader):
    format: Literal["score-erasure/certificate/1"] = CERTIFICATE_FORMAT
    config: dict
    n_per_class: int
    concept_prompts: list[str]
    neutral_prompts: list[str]
    mi_nats: Metric  # max(0, log 2 − held-out cross-entropy) of the best probe
    base_mi_nats: Metric
    fano_nats: Metric  # log 2 − h_b(held-out error)
    base_fano_nats: Metric
    pinsker_max_accuracy: Metric  # ½ + √(I/2) at mi_nats (and at its interval's ends)
    base_pinsker_max_accuracy: Metric
    ratio: float | None  # mi_nats / base_mi_nats (None when the base leaks nothing measurable)
    probes: dict[str, ProbeRecord]
    base_probes: dict[str, ProbeRecord]
    # each source of concept prompts alone (targets, paraphrases, each attack folder's finds): an average over
    # all of them can hide one that leaks; None where a source drew too few images to probe
    sources: dict[str, SourceRecord] = Field(default_factory=dict)
    assumption: str
    notes: list[str] = Field(default_factory=list)
    versions: dict[str, str]
    platform: str
    created: str
    seconds: float


def _probe_records(leak: Leakage) -> dict[str, dict]:
    return {name: {"mi_nats": p.mi_nats.as_dict(), "fano_nats": p.fano_nats.as_dict(),
                   "accuracy": p.accuracy.as_dict(), "cross_entropy": p.cross_entropy}
            for name, p in leak.probes.items()}


def leakage_record(leak: Leakage, base_leak: Leakage) -> dict:
    """The report's estimate fields for the model and its base."""
    return {"mi_nats": leak.mi_nats.as_dict(), "base_mi_nats": base_leak.mi_nats.as_dict(),
            "fano_nats": leak.fano_nats.as_dict(), "base_fano_nats": base_leak.fano_nats.as_dict(),
            "pinsker_max_accuracy": leak.pinsker_max_accuracy.as_dict(),
            "base_pinsker_max_accuracy": base_leak.pinsker_max_accuracy.as_dict(),
            "ratio": leak.mi_nats.value / base_leak.mi_nats.value if base_leak.mi_nats.value > 0 else None,
            "probes": _probe_records(leak), "base_probes": _probe_records(base_leak)}


def source_records(sources: list[str], n: int, leaks: dict[str, Leakage | None],
                   base_leaks: dict[str, Leakage | None]) -> dict[str, dict]:
    """The report's per-source fields: how many prompts and images (image j drew prompt j mod len(sources)) each
    source gave, and its leakage alone."""
    drawn = [sources[j % len(sources)] for j in range(n)]
    return {s: {"prompts": sources.count(s), "images": drawn.count(s),
                "mi_nats": leak.mi_nats.as_dict() if leak else None,
                "base_mi_nats": base_leaks[s].mi_nats.as_dict() if base_leaks.get(s) else None}
            for s, leak in leaks.items()}


TEMPLATE = """<!doctype html>
<html><head><meta charset="utf-8"><title>leakage of {{ r.concept }}: {{ r.model }}</title>
{{ style|safe }}
<style>body { max-width: 70em; } .assumption { border-left: 4px solid #c80; padding-left: 1em; }</style></head><body>
<h1>Leakage certificate: {{ r.task }} / {{ r.concept }}</h1>
<p>model <code>{{ r.model }}</code> (<span class="small">{{ r.model_hash[:16] }}</span>), base <code>{{ r.base }}</code>
(<span class="small">{{ r.base_hash[:16] }}</span>); protocol <code>{{ r.protocol.name }}</code>
v{{ r.protocol.version }}; {{ r.n_per_class }} images per class; {{ "%.1f"|format(r.seconds) }} s; {{ r.created }}.</p>
<p class="assumption"><b>What this number means.</b> {{ r.assumption }}</p>
<table><tr><th></th><th>model</th><th>95% interval</th><th>base</th><th>95% interval</th></tr>
{% for name, label in rows %}{% set m = r[name] %}{% set b = r["base_" + name] %}
<tr><td>{{ label }}</td><td class="num">{{ fmt(m.value) }}</td>
<td class="num">[{{ fmt(m.ci_low) }}, {{ fmt(m.ci_high) }}]</td>
<td class="num">{{ fmt(b.value) }}</td><td class="num">[{{ fmt(b.ci_low) }}, {{ fmt(b.ci_high) }}]</td></tr>
{% endfor %}</table>
<p>ratio mi_nats / base_mi_nats:
{{ fmt(r.ratio) if r.ratio is not none else "undefined (the base shows no leakage)" }}</p>
<img class="plot" src="{{ plot }}" alt="mi">
{% if r.sources %}<h2>By source of the concept prompts</h2>
<table><tr><th>source</th><th>prompts</th><th>images</th><th>model: mi_nats</th><th>95% interval</th>
<th>base: mi_nats</th></tr>
{% for name, s in r.sources.items() %}<tr><td>{{ name }}</td><td class="num">{{ s.prompts }}</td>
<td class="num">{{ s.images }}</td>
{% if s.mi_nats %}<td class="num">{{ fmt(s.mi_nats.value) }}</td>
<td class="num">[{{ fmt(s.mi_nats.ci_low) }}, {{ fmt(s.mi_nats.ci_high) }}]</td>
<td class="num">{{ fmt(s.base_mi_nats.value) if s.base_mi_nats else "" }}</td>
{% else %}<td colspan="3">too few images to probe</td>{% endif %}</tr>
{% endfor %}</table>{% endif %}
<h2>Probes (k-fold cross-fitted)</h2>
<table><tr><th>probe</th><th>model: mi_nats</th><th>accuracy</th><th>cross-entropy</th><th>base: mi_nats</th>
<th>accuracy</th><th>cross-entropy</th></tr>
{% for name, p in r.probes.items() %}{% set b = r.base_probes[name] %}
<tr><td>{{ name }}</td><td class="num">{{ fmt(p.mi_nats.value) }}</td><td class="num">{{ fmt(p.accuracy.value) }}</td>
<td class="num">{{ fmt(p.cross_entropy) }}</td><td class="num">{{ fmt(b.mi_nats.value) }}</td>
<td class="num">{{ fmt(b.accuracy.value) }}</td><td class="num">{{ fmt(b.cross_entropy) }}</td></tr>
{% endfor %}</table>
<h2>Images (first {{ strip_images }} of each class)</h2>
<table class="strips"><colgroup><col style="width: 8%"><col><col></colgroup>
<tr><th></th><th>concept prompts</th><th>neutral prompts</th></tr>
{% for who in ("model", "base") %}<tr><td>{{ who }}</td>
<td><img class="strip" src="{{ image("images/" + who + "-concept.png") }}" alt="concept"></td>
<td><img class="strip" src="{{ image("images/" + who + "-neutral.png") }}" alt="neutral"></td></tr>{% endfor %}
</table>
<h2>Prompts</h2><p><b>concept (C = 1):</b> {{ r.concept_prompts|join("; ") }}</p>
<p><b>neutral (C = 0):</b> {{ r.neutral_prompts|join("; ") }}</p>
<h2>Configuration</h2><pre>{{ config }}</pre>
<p class="small">{{ r.platform }}; {{ r.versions }}</p>
</body></html>
"""

ROWS = (("mi_nats", "mi_nats: log 2 − held-out cross-entropy (nats)"),
        ("fano_nats", "Fano: log 2 − h_b(held-out error) (nats)"),
        ("pinsker_max_accuracy", "largest detection accuracy the estimate allows (Pinsker)"))


def _plot(report: CertificateReport) -> str:
    fig, ax = reporting.figure(4, 3)
    reporting.metric_bars(ax, ["mi_nats", "fano_nats"], {
        f"base: {report.base}": {"mi_nats": report.base_mi_nats, "fano_nats": report.base_fano_nats},
        f"model: {report.model}": {"mi_nats": report.mi_nats, "fano_nats": report.fano_nats}})
    ax.axhline(np.log(2), color="grey", linestyle=":", linewidth=1)
    ax.set_ylim(0, 0.75)
    ax.set_title("leakage lower bounds (nats; log 2 dotted)", fontsize=8)
    return reporting.figure_png(fig)


def render_certificate_html(report: CertificateReport, folder: Path) -> str:
    return reporting.render_html(TEMPLATE, folder, r=report.model_dump(), rows=ROWS, plot=_plot(report),
                       strip_images=STRIP_IMAGES, config=json.dumps(report.config, indent=2, default=str))


def write_certificate(report: CertificateReport, images: dict[str, tuple[np.ndarray, np.ndarray]],
                      folder: Path) -> None:
    """Image strips, report.json and report.html into `folder`."""
    folder = Path(folder)
    for who, (concept_images, neutral_images) in images.items():
        reporting.save_strip(concept_images[:STRIP_IMAGES], folder / "images" / f"{who}-concept.png")
        reporting.save_strip(neutral_images[:STRIP_IMAGES], folder / "images" / f"{who}-neutral.png")
    reporting.write_json_and_html(folder, report, render_certificate_html(report, folder))
