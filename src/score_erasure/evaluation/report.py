"""report.json (the record, validated by a pydantic schema) and report.html (a self-contained view of it).

The HTML is rendered only from report.json and the image strips beside it, so `score report DIR` can
re-render it after a template change without sampling anything. Images and plots are embedded as base64
PNG: the file can be mailed or attached to an issue on its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from score_erasure.errors import UserError
from score_erasure.reporting import (
    BETTER,
    Metric,
    RunHeader,
    figure,
    figure_png,
    metric_bars,
    outside_legend,
    render_html,
    save_strip,
    write_json_and_html,
)

REPORT_FORMAT = "score-erasure/evaluation-report/1"
MEANING = {"acc_e": "target prompts on which the judge still sees the concept",
           "acc_g": "held-out paraphrases on which the judge still sees the concept",
           "acc_s": "retained prompts drawn as asked",
           "h": "harmonic mean of 1-acc_e, acc_s, 1-acc_g",
           "fid": "Frechet distance to the base on neutral prompts (judge features)",
           "kid": "kernel distance to the base on neutral prompts: squared MMD, cubic polynomial kernel on the "
                  "judge's features, in raw feature units (not scaled by 10^3 or 10^6)",
           "ssim": "structural similarity to the base image of the same seed (neutral prompts)",
           "psnr": "PSNR in dB to the base image of the same seed (neutral prompts, capped at 100)",
           "clip_score": "CLIP score of neutral images against their prompts",
           "acc_c": "target prompts naming other attributes too, on which those attributes are still drawn",
           "acc_n": "look-alikes (nearest to the concept in the judge's feature space) drawn as asked",
           "fid_floor": "the floor: fid of the base to itself at other seeds (the model's own variation)",
           "kid_floor": "the floor: kid of the base to itself at other seeds",
           "ssim_floor": "the floor: ssim of the base to itself at other seeds",
           "fid_ratio": "fid over its floor (below 1: within the model's own variation)",
           "kid_ratio": "kid over its floor",
           "ssim_ratio": "(1 - ssim) over (1 - its floor): the seeded drift against that of another seed"}
GROUP_TITLES = {"target": "Target prompts (acc_e: concept detected)",
                "generality": "Held-out paraphrases (acc_g: concept detected)",
                "retained": "Retained prompts (acc_s: drawn as asked)",
                "neutral": "Neutral prompts (fidelity; concept detected shown)",
                "context": "Target prompts with other attributes (acc_c: those attributes drawn)",
                "lookalike": "Look-alikes (acc_n: drawn as asked)"}


class PromptRow(BaseModel):
    prompt: str
    rate: float
    base_rate: float
    image: str
    base_image: str


class Report(RunHeader):
    format: Literal["score-erasure/evaluation-report/1"] = REPORT_FORMAT
    seeds: list[int]
    config: dict
    metrics: dict[str, Metric]
    base_metrics: dict[str, Metric]
    groups: dict[str, list[PromptRow]]
    # Judges that detect several classes (NudeNet): images of the target group with each class, for the model and
    # the base ({"model": {class: count}, "base": {...}}); empty for other judges.
    class_counts: dict[str, dict[str, int]] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    cache: dict[str, int] = Field(default_factory=dict)
    versions: dict[str, str]
    platform: str
    created: str
    seconds: float


def load_report(folder: Path) -> Report:
    path = Path(folder) / "report.json"
    try:
        return Report.model_validate_json(path.read_text())
    except OSError as exc:
        raise UserError(f"no readable report.json in '{folder}' ({exc.strerror or exc}); run `score evaluate` "
                        "first") from exc
    except ValidationError as exc:
        raise UserError(f"'{path}' is not an evaluation report: {exc.errors()[0]['msg']}") from exc


def _plots(report: Report) -> list[str]:
    fig, ax = figure(6, 3)
    names = [n for n in ("acc_e", "acc_g", "acc_s", "acc_c", "acc_n", "h") if n in report.metrics]
    metric_bars(ax, names, {f"base: {report.base}": report.base_metrics, f"evaluated: {report.model}": report.metrics})
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{report.task} / {report.concept} (95% bootstrap intervals)", fontsize=9)
    plots = [figure_png(fig)]
    rows = [(g, r) for g in ("target", "generality") for r in report.groups.get(g, [])]
    if rows:
        fig, ax = figure(6, 0.25 * len(rows) + 0.8)
        ys = np.arange(len(rows))
        ax.barh(ys - 0.2, [r.base_rate for _, r in rows], 0.4, label="base")
        ax.barh(ys + 0.2, [r.rate for _, r in rows], 0.4, label="evaluated")
        ax.set_yticks(ys, [f"{g}: {r.prompt}" for g, r in rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("fraction of images in which the judge sees the concept", fontsize=8)
        outside_legend(ax)
        plots.append(figure_png(fig))
    return plots


TEMPLATE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{{ r.task }} / {{ r.concept }}: {{ r.model }}</title>
{{ style|safe }}</head><body>
<h1>{{ r.task }} / {{ r.concept }}</h1>
<p>evaluated <code>{{ r.model }}</code> (<span class="small">{{ r.model_hash[:16] }}</span>) against base
<code>{{ r.base }}</code> (<span class="small">{{ r.base_hash[:16] }}</span>);
protocol <code>{{ r.protocol.name }}</code> v{{ r.protocol.version }}
(<span class="small">{{ r.protocol_hash[:16] }}</span>); {{ r.seeds|length }} seeds per prompt;
{{ "%.1f"|format(r.seconds) }} s; {{ r.created }}.</p>
<p class="small">{{ r.protocol.description }}</p>
{% for note in r.notes %}<p><b>note:</b> {{ note }}</p>{% endfor %}
<h2>Metrics</h2>
<table><tr><th>metric</th><th>evaluated</th><th>95% interval</th><th>base</th><th>95% interval</th>
<th>better</th><th>meaning</th></tr>
{% for name, m in r.metrics.items() %}{% set b = r.base_metrics.get(name) %}
<tr><td>{{ name }}</td><td class="num">{{ fmt(m.value) }}</td>
<td class="num">[{{ fmt(m.ci_low) }}, {{ fmt(m.ci_high) }}]</td>
<td class="num">{{ fmt(b.value) if b else "" }}</td>
<td class="num">{{ "[%s, %s]"|format(fmt(b.ci_low), fmt(b.ci_high)) if b else "" }}</td>
<td>{{ better.get(name, "") }}</td><td class="small">{{ meaning.get(name, "") }}</td></tr>
{% endfor %}</table>
{% for plot in plots %}<img class="plot" src="{{ plot }}" alt="plot"> {% endfor %}
{% for group, rows in r.groups.items() %}
<h2>{{ titles.get(group, group) }}</h2>
<table class="strips"><colgroup><col style="width: 18%"><col style="width: 6%"><col style="width: 6%"><col><col>
</colgroup><tr><th>prompt</th><th>base rate</th><th>rate</th><th>base</th><th>evaluated</th></tr>
{% for row in rows %}<tr><td>{{ row.prompt }}</td><td class="num">{{ "%.2f"|format(row.base_rate) }}</td>
<td class="num">{{ "%.2f"|format(row.rate) }}</td>
<td><img class="strip" src="{{ image(row.base_image) }}" alt="base"></td>
<td><img class="strip" src="{{ image(row.image) }}" alt="evaluated"></td></tr>
{% endfor %}</table>
{% endfor %}
<h2>Configuration</h2><pre>{{ config }}</pre>
<p class="small">cache: {{ r.cache }}; {{ r.platform }}; {{ r.versions }}</p>
</body></html>
"""


def render_report_html(report: Report, folder: Path) -> str:
    return render_html(TEMPLATE, folder, r=report, plots=_plots(report), better=BETTER, meaning=MEANING,
                       titles=GROUP_TITLES, config=json.dumps(report.config, indent=2, default=str))


def write_report(report: Report, images: dict[str, np.ndarray], base_images: dict[str, np.ndarray],
                 folder: Path) -> None:
    """Image strips, report.json and report.html into `folder`."""
    folder = Path(folder)
    for group, rows in report.groups.items():
        for i, row in enumerate(rows):
            save_strip(images[group][i], folder / row.image)
            save_strip(base_images[group][i], folder / row.base_image)
    write_json_and_html(folder, report, render_report_html(report, folder))
