"""Seeded text-to-image generation and labelled grids.

Image j of every prompt uses seed `seed + j`, so two prompts (or two models) are compared on the same
starting noise: the basis of the seeded drift metrics and of the image cache.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from score_erasure import parallel
from score_erasure.backends import backend_for
from score_erasure.errors import UserError
from score_erasure.io import atomic_write
from score_erasure.progress import progress_bar
from score_erasure.reporting import figure, write_figure

DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 3.0


def validate_prompts(prompts: list[str]) -> list[str]:
    if not prompts:
        raise UserError("no prompt given; pass at least one --prompt TEXT")
    if any(not p.strip() for p in prompts):
        raise UserError("empty prompt; every --prompt needs some text (use the empty prompt only through guidance)")
    return prompts


@torch.no_grad()
def generate(pipe, prompts: list[str], seeds: list[int], steps: int = DEFAULT_STEPS,
             guidance: float = DEFAULT_GUIDANCE, batch_size: int = 64, show_progress: bool = True,
             prompt_embeds: torch.Tensor | None = None) -> np.ndarray:
    """Images as uint8 of shape (len(prompts), len(seeds), H, W, 3); deterministic for given seeds on CPU.

    With `prompt_embeds` (len(prompts), ...), a conditioning as the pipeline's Denoiser encodes it, prompt i is
    drawn from that conditioning (an attack's optimised tokens) and `prompts` are only its labels."""
    if steps < 1:
        raise UserError(f"--steps must be at least 1 (got {steps})")
    jobs = [(i, s) for i in range(len(prompts)) for s in seeds]
    backend = backend_for(pipe)  # knows how this pipeline family takes prompts and guidance
    batches = [jobs[i:i + batch_size] for i in range(0, len(jobs), batch_size)]
    mine = parallel.my_share(len(batches))  # all of them unless launched with accelerate
    done: dict[int, np.ndarray] = {}
    with progress_bar(transient=True) as bar:
        task = bar.add_task("generate", total=sum(len(batches[b]) for b in mine), info="",
                            visible=show_progress and parallel.is_main())
        for b in mine:
            chunk = batches[b]
            generators = [torch.Generator(device="cpu").manual_seed(int(s)) for _, s in chunk]
            rows = [row for row, _ in chunk]
            inputs = backend.pipeline_inputs(guidance, prompts=[prompts[row] for row in rows]) \
                if prompt_embeds is None else backend.pipeline_inputs(guidance, cond=prompt_embeds[rows])
            images = pipe(**inputs, generator=generators, num_inference_steps=steps, output_type="np").images
            done[b] = np.clip(np.rint(np.asarray(images) * 255), 0, 255).astype(np.uint8)
            bar.update(task, advance=len(chunk))
    done = parallel.gather(done)
    out = [done[b] for b in range(len(batches))]
    arr = np.concatenate(out)
    return arr.reshape(len(prompts), len(seeds), *arr.shape[1:])


def sampler_name(pipe) -> str:
    """What draws the pipeline's images, for the records: its scheduler's class, or `autoregressive`."""
    scheduler = getattr(pipe, "scheduler", None)
    return "autoregressive" if scheduler is None else type(scheduler).__name__


def slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "prompt"


def save_grid(images: np.ndarray, row_labels: list[str], path: Path, col_labels: list[str] | None = None,
              scale: int = 3) -> None:
    """A labelled grid PNG (rows = prompts, columns = seeds), written atomically."""
    rows, cols = images.shape[:2]
    h, w = images.shape[2:4]
    fig, axes = figure(cols * w * scale / 100 + 2.5, rows * h * scale / 100 + 0.3, nrows=rows, ncols=cols,
                       squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.imshow(images[r, c], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(row_labels[r], rotation=0, ha="right", va="center", fontsize=8)
            if r == 0 and col_labels:
                ax.set_title(col_labels[c], fontsize=7)
    fig.tight_layout()
    write_figure(fig, path)


def save_images(images: np.ndarray, prompts: list[str], seeds: list[int], out: Path) -> list[Path]:
    paths = []
    for i, prompt in enumerate(prompts):
        folder = out / "images" / f"{i:02d}-{slug(prompt)}"
        for j, seed in enumerate(seeds):
            path = folder / f"seed{seed}.png"
            atomic_write(path, lambda tmp, image=images[i, j]: Image.fromarray(image).save(tmp, format="PNG"))
            paths.append(path)
    return paths
