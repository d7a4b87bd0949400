"""report.json (the record, validated by a pydantic schema) and report.html (a self-contained view of it).

The HTML is rendered only from report.json and the image strips beside it, so `score report DIR` can
re-render it after a template change without sampling anything. Images and plots are embedded as base64
PNG: the file can be mailed or attached to an issue on its own.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from score_erasure.errors import UserError
from score_erasure.io import atomic_write, atomic_write_text

REPORT_FORMAT = "score-erasure/evaluation-report/1"
# The direction in which each metric is better, for the tables and the plots.
BETTER = {"acc_e": "lower", "acc_g": "lower", "acc_s": "higher", "h": "higher", "fid": "lower", "kid": "lower",
          "ssim": "higher", "psnr": "higher", "clip_score": "higher"}
MEANING = {"acc_e": "target prompts on which the judge still sees the concept",
           "acc_g": "held-out paraphrases on which the judge still sees the concept",
           "acc_s": "retained prompts drawn as asked",
           "h": "harmonic mean of 1-acc_e, acc_s, 1-acc_g",
           "fid": "Frechet distance to the base on neutral prompts (judge features)",
           "kid": "kernel distance to the base on neutral prompts (judge features)",
           "ssim": "structural similarity to the base image of the same seed (neutral prompts)",
           "psnr": "PSNR in dB to the base image of the same seed (neutral prompts, capped at 100)",
           "clip_score": "CLIP score of neutral images against their prompts"}
GROUP_TITLES = {"target": "Target prompts (acc_e: concept detected)",
                "generality": "Held-out paraphrases (acc_g: concept detected)",
                "retained": "Retained prompts (acc_s: drawn as asked)",
                "neutral": "Neutral prompts (fidelity; concept detected shown)"}
STRIP_SIDE = 96  # images in report strips are downscaled to at most this many pixels a side


class Metric(BaseModel):
    value: float
    ci_low: float
    ci_high: float


class PromptRow(BaseModel):
    prompt: str
    rate: float
    base_rate: float
    image: str
    base_image: str


class RunHeader(BaseModel):
    """What every report of a model on a protocol concept names first: the run's identity and hashes."""

    model_config = ConfigDict(extra="forbid")

    task: str
    concept: str
    model: str
    base: str
    model_hash: str
    base_hash: str
    protocol: dict
    protocol_hash: str


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


def save_strip(images: np.ndarray, path: Path, side: int = STRIP_SIDE) -> None:
    """One prompt's images (S, H, W, 3) side by side in one PNG."""
    strip = Image.fromarray(np.concatenate(list(images), axis=1))
    h, w = images.shape[1:3]
    if max(h, w) > side:
        scale = side / max(h, w)
        strip = strip.resize((round(strip.width * scale), round(h * scale)), Image.LANCZOS)
    atomic_write(path, lambda tmp: strip.save(tmp, format="PNG"))


def _b64(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _figure_png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return _b64(buf.getvalue())


def metric_bars(ax, names: list[str], series: dict[str, dict[str, Metric]]) -> None:
    """Grouped bars with interval whiskers: one group per metric, one bar per series (model)."""
    width = 0.8 / max(len(series), 1)
    for k, (label, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i, name in enumerate(names) if name in values]
        shown = [values[name] for name in names if name in values]
        heights = [m.value for m in shown]
        errors = [[m.value - m.ci_low for m in shown], [m.ci_high - m.value for m in shown]]
        ax.bar(xs, heights, width, yerr=np.clip(errors, 0, None), capsize=3, label=label)
    ax.set_xticks(range(len(names)), [f"{n}\n({BETTER.get(n, '')})" for n in names])
    ax.legend(fontsize=8)


def _plots(report: Report) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    names = [n for n in ("acc_e", "acc_g", "acc_s", "h") if n in report.metrics]
    metric_bars(ax, names, {f"base: {report.base}": report.base_metrics, f"evaluated: {report.model}": report.metrics})
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{report.task} / {report.concept} (95% bootstrap intervals)", fontsize=9)
    plots = [_figure_png(fig)]
    rows = [(g, r) for g in ("target", "generality") for r in report.groups.get(g, [])]
    if rows:
        fig, ax = plt.subplots(figsize=(6, 0.25 * len(rows) + 0.8))
        ys = np.arange(len(rows))
        ax.barh(ys - 0.2, [r.base_rate for _, r in rows], 0.4, label="base")
        ax.barh(ys + 0.2, [r.rate for _, r in rows], 0.4, label="evaluated")
        ax.set_yticks(ys, [f"{g}: {r.prompt}" for g, r in rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("fraction of images in which the judge sees the concept", fontsize=8)
        ax.legend(fontsize=8)
        plots.append(_figure_png(fig))
    return plots


TEMPLATE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{{ r.task }} / {{ r.concept }}: {{ r.model }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; } td, th { border: 1px solid #ccc; padding: 3px 8px; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img.strip { image-rendering: pixelated; height: 72px; } .small { color: #666; font-size: 85%; }
code { background: #f5f5f5; padding: 0 3px; }
</style></head><body>
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
{% for plot in plots %}<img src="{{ plot }}" alt="plot"> {% endfor %}
{% for group, rows in r.groups.items() %}
<h2>{{ titles.get(group, group) }}</h2>
<table><tr><th>prompt</th><th>base rate</th><th>rate</th><th>base</th><th>evaluated</th></tr>
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


def fmt(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:.1f}"


def render_html(report: Report, folder: Path) -> str:
    import json

    from jinja2 import Environment

    def image(rel: str) -> str:
        path = Path(folder) / rel
        return _b64(path.read_bytes()) if path.is_file() else ""

    env = Environment(autoescape=True)
    return env.from_string(TEMPLATE).render(
        r=report, plots=_plots(report), image=image, fmt=fmt, better=BETTER, meaning=MEANING,
        titles=GROUP_TITLES, config=json.dumps(report.config, indent=2, default=str))


def write_report(report: Report, images: dict[str, np.ndarray], base_images: dict[str, np.ndarray],
                 folder: Path) -> None:
    """Image strips, report.json and report.html into `folder`."""
    folder = Path(folder)
    for group, rows in report.groups.items():
        for i, row in enumerate(rows):
            save_strip(images[group][i], folder / row.image)
            save_strip(base_images[group][i], folder / row.base_image)
    atomic_write_text(folder / "report.json", report.model_dump_json(indent=2) + "\n")
    atomic_write_text(folder / "report.html", render_html(report, folder))


def rerender(folder: Path) -> Path:
    """Re-render report.html from report.json (after a template change, or to repair a deleted html)."""
    report = load_report(folder)
    path = Path(folder) / "report.html"
    atomic_write_text(path, render_html(report, folder))
    return path
