"""What every report (evaluation, attack, certificate, bench) is made of: the shared record fields, number
formatting, image strips, figures as embedded PNG, and the one HTML renderer.

Reports embed images and plots as base64 PNG, so that report.html can be mailed or attached on its own.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from jinja2 import Environment
from matplotlib.figure import Figure
from PIL import Image
from pydantic import BaseModel, ConfigDict

from score_erasure.io import atomic_write, atomic_write_text

STRIP_SIDE = 96  # images in report strips are downscaled to at most this many pixels a side
# The direction in which each metric is better, for the tables and the plots.
BETTER = {"acc_e": "lower", "acc_g": "lower", "acc_s": "higher", "h": "higher", "fid": "lower", "kid": "lower",
          "ssim": "higher", "psnr": "higher", "clip_score": "higher", "asr": "lower", "mi_nats": "lower",
          "fano_nats": "lower", "acc_c": "higher", "acc_n": "higher", "h_rob": "higher", "fid_ratio": "lower",
          "kid_ratio": "lower", "ssim_ratio": "lower"}
# Units where a number alone would mislead: fid and kid are on the judge's features, not Inception's.
UNITS = {"fid": "judge features", "kid": "raw MMD², judge features", "psnr": "dB", "fid_ratio": "x floor",
         "kid_ratio": "x floor", "ssim_ratio": "x floor"}
# Pages fit a 1280-pixel window: image strips scale to their column (tables of strips have a fixed layout), long
# paths and prompts wrap, plots shrink to the page.
STYLE = """<style>
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 1em 0; } td, th { border: 1px solid #ccc; padding: 3px 8px; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td, th, code, p { overflow-wrap: break-word; } pre { white-space: pre-wrap; overflow-wrap: anywhere; }
table.strips { table-layout: fixed; width: 100%; }
img.strip { image-rendering: pixelated; width: 100%; height: auto; display: block; }
img.plot { max-width: 100%; height: auto; } .small { color: #666; font-size: 85%; }
code { background: #f5f5f5; padding: 0 3px; }
</style>"""


class Metric(BaseModel):
    value: float
    ci_low: float
    ci_high: float


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
    # torch's thread count and CPU kernel level (provenance.compute); empty in reports written before it was kept
    compute: dict = {}


def fmt(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:.1f}"


def save_strip(images: np.ndarray, path: Path, side: int = STRIP_SIDE) -> None:
    """One prompt's images (S, H, W, 3) side by side in one PNG."""
    strip = Image.fromarray(np.concatenate(list(images), axis=1))
    h, w = images.shape[1:3]
    if max(h, w) > side:
        scale = side / max(h, w)
        strip = strip.resize((round(strip.width * scale), round(h * scale)), Image.LANCZOS)
    atomic_write(path, lambda tmp: strip.save(tmp, format="PNG"))


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def figure(width: float, height: float, **subplots):
    """A new (figure, axes) to draw a report's plot on (`subplots`: matplotlib's, e.g. ncols=2). A bare Figure,
    not pyplot's: no global backend is chosen and nothing needs closing, so importing the package leaves a
    notebook's plotting as it was."""
    fig = Figure(figsize=(width, height))
    return fig, fig.subplots(**subplots)


def figure_png(fig) -> str:
    """A finished figure as a PNG data URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return png_data_uri(buf.getvalue())


def write_figure(fig, path: Path) -> None:
    """A finished figure as a PNG file, written atomically."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def metric_bars(ax, names: list[str], series: dict[str, dict[str, Metric]]) -> None:
    """Grouped bars with interval whiskers: one group per metric, one bar per series (model)."""
    width = 0.8 / max(len(series), 1)
    for k, (label, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i, name in enumerate(names) if name in values]
        shown = [values[name] for name in names if name in values]
        heights = [m.value for m in shown]
        errors = [[m.value - m.ci_low for m in shown], [m.ci_high - m.value for m in shown]]
        ax.bar(xs, heights, width, yerr=np.clip(errors, 0, None), capsize=3, label=label)
    ax.set_xticks(range(len(names)), [f"{n}\n({BETTER[n]})" if n in BETTER else n for n in names])
    outside_legend(ax)


def outside_legend(ax) -> None:
    """The legend beside the axes, where it cannot cover a bar."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)


def render_html(template: str, folder: Path, **context) -> str:
    """A report's HTML from its jinja template; `image(rel)` embeds a PNG of `folder`, `style` is the shared CSS."""

    def image(rel: str) -> str:
        path = Path(folder) / rel
        return png_data_uri(path.read_bytes()) if path.is_file() else ""

    return Environment(autoescape=True).from_string(template).render(image=image, fmt=fmt, style=STYLE, **context)


def write_json_and_html(folder: Path, record: BaseModel, html: str) -> None:
    """report.json (the record) and report.html beside it, each written atomically."""
    atomic_write_text(Path(folder) / "report.json", record.model_dump_json(indent=2) + "\n")
    atomic_write_text(Path(folder) / "report.html", html)
