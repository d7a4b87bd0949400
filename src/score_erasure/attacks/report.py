"""An attack's report.json (a pydantic record) and report.html (rendered from it and the image strips)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from score_erasure.reporting import Metric, RunHeader, figure, figure_png, metric_bars, render_html, write_json_and_html

ATTACK_REPORT_FORMAT = "score-erasure/attack-report/1"


class AttackRow(BaseModel):
    """One attacked prompt: what the attack found and the fraction of its images showing the concept."""

    prompt: str
    adversarial: str
    exact_text: bool
    rate: float
    pre_rate: float | None  # the same prompt unattacked (None when it is not a target prompt)
    image: str
    pre_image: str | None
    seconds: float
    final_objective: float | None


class PreRow(BaseModel):
    prompt: str
    rate: float
    image: str


class AttackReport(RunHeader):
    format: Literal["score-erasure/attack-report/1"] = ATTACK_REPORT_FORMAT
    attack: str
    seeds: list[int]
    config: dict
    budget: dict
    asr: Metric  # the found prompts' images showing the concept
    pre_asr: Metric  # the protocol's target prompts' images, unattacked
    best_of_asr: Metric | None = None  # per prompt and seed, the unattacked or the found prompt shows it
    rows: list[AttackRow]
    pre_rows: list[PreRow]
    resumed: int = 0
    notes: list[str] = Field(default_factory=list)
    versions: dict[str, str]
    platform: str
    created: str
    seconds: float  # this invocation
    attack_seconds: float  # attacking and drawing every prompt, including prompts resumed from earlier runs


TEMPLATE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{{ r.attack }}: {{ r.task }} / {{ r.concept }} on {{ r.model }}</title>
{{ style|safe }}</head><body>
<h1>{{ r.attack }} on {{ r.task }} / {{ r.concept }}</h1>
<p>attacked <code>{{ r.model }}</code> (<span class="small">{{ r.model_hash[:16] }}</span>); base
<code>{{ r.base }}</code>; protocol <code>{{ r.protocol.name }}</code> v{{ r.protocol.version }}
(<span class="small">{{ r.protocol_hash[:16] }}</span>); {{ r.seeds|length }} seeds per prompt;
{{ "%.1f"|format(r.attack_seconds) }} s of attack ({{ "%.1f"|format(r.seconds) }} s this run,
{{ r.resumed }} prompts resumed); {{ r.created }}.</p>
<p>ASR is the fraction of the attacked prompts' images in which the judge sees the concept; the pre-attack
rate is the same on the protocol's target prompts, unattacked.</p>
{% for note in r.notes %}<p><b>note:</b> {{ note }}</p>{% endfor %}
<table><tr><th>metric</th><th>value</th><th>95% interval</th></tr>
<tr><td>asr</td><td class="num">{{ fmt(r.asr.value) }}</td>
<td class="num">[{{ fmt(r.asr.ci_low) }}, {{ fmt(r.asr.ci_high) }}]</td></tr>
<tr><td>pre_asr</td><td class="num">{{ fmt(r.pre_asr.value) }}</td>
<td class="num">[{{ fmt(r.pre_asr.ci_low) }}, {{ fmt(r.pre_asr.ci_high) }}]</td></tr>
{% if r.best_of_asr %}<tr><td>best_of_asr</td><td class="num">{{ fmt(r.best_of_asr.value) }}</td>
<td class="num">[{{ fmt(r.best_of_asr.ci_low) }}, {{ fmt(r.best_of_asr.ci_high) }}]</td></tr>{% endif %}</table>
<p class="small">best_of_asr counts an image when, at that seed, the unattacked prompt or the found one shows the
concept: an attacker keeps the original prompt where it already works (UnlearnDiffAtk's convention).</p>
<img class="plot" src="{{ plot }}" alt="asr">
<h2>Attacked prompts</h2>
<table class="strips"><colgroup><col style="width: 14%"><col style="width: 14%"><col style="width: 8%">
<col style="width: 7%"><col style="width: 7%"><col><col></colgroup>
<tr><th>prompt</th><th>found</th><th>text reproduces it</th><th>rate before</th><th>rate after</th>
<th>before</th><th>after</th></tr>
{% for row in r.rows %}<tr><td>{{ row.prompt }}</td><td><code>{{ row.adversarial }}</code></td>
<td>{{ "yes" if row.exact_text else "no" }}</td>
<td class="num">{{ "%.2f"|format(row.pre_rate) if row.pre_rate is not none else "" }}</td>
<td class="num">{{ "%.2f"|format(row.rate) }}</td>
<td>{% if row.pre_image %}<img class="strip" src="{{ image(row.pre_image) }}" alt="before">{% endif %}</td>
<td><img class="strip" src="{{ image(row.image) }}" alt="after"></td></tr>
{% endfor %}</table>
<h2>Budget and configuration</h2><pre>{{ budget }}</pre><pre>{{ config }}</pre>
<p class="small">{{ r.platform }}; {{ r.versions }}</p>
</body></html>
"""


def _plot(report: AttackReport) -> str:
    fig, ax = figure(3.5, 3)
    metric_bars(ax, ["asr"], {"target prompts, unattacked": {"asr": report.pre_asr},
                              f"{report.attack}": {"asr": report.asr}})
    ax.set_ylim(0, 1.05)
    ax.set_title("concept detected (95% bootstrap intervals)", fontsize=8)
    return figure_png(fig)


def render_attack_html(report: AttackReport, folder: Path) -> str:
    return render_html(TEMPLATE, folder, r=report, plot=_plot(report), budget=json.dumps(report.budget, indent=2),
                       config=json.dumps(report.config, indent=2, default=str))


def write_attack_report(report: AttackReport, folder: Path) -> None:
    write_json_and_html(folder, report, render_attack_html(report, folder))
