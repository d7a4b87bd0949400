"""Images per second of each embedded model, generated as the evaluation does (`generate`: batches of 64, the
protocol's 25 sampler steps and guidance 3 for the diffusion models; one code at a time for embedded-ar, one
scale at a time for embedded-var), after one warm-up batch. Prints a table and writes JSON with the thread count.

    python benchmarks/generation_speed.py --out runs/generation-speed.json [--threads 1] [--images 256]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

MODELS = ("embedded", "embedded-flux", "embedded-ar", "embedded-var")
PROMPTS = ["a red star", "a striped circle", "a blue heart on fire", "Zorblat"]


def speed(name: str, images: int, batch: int) -> dict:
    from score_erasure.generate import generate
    from score_erasure.models import load_pipeline

    pipe = load_pipeline(name)
    seeds = list(range(images // len(PROMPTS)))
    generate(pipe, PROMPTS[:1], list(range(batch)), batch_size=batch, show_progress=False)  # warm-up
    start = time.perf_counter()
    drawn = generate(pipe, PROMPTS, seeds, batch_size=batch, show_progress=False)
    seconds = time.perf_counter() - start
    count = drawn.shape[0] * drawn.shape[1]
    return {"model": name, "images": count, "seconds": seconds, "images_per_second": count / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    from score_erasure.io import atomic_write_json
    from score_erasure.provenance import provenance

    torch.set_num_threads(args.threads)
    rows = [speed(name, args.images, args.batch_size) for name in args.models.split(",")]
    table = Table(title=f"generation speed, {args.threads} thread(s), batches of {args.batch_size}")
    for column in ("model", "images", "seconds", "images/s"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["model"], str(row["images"]), f"{row['seconds']:.1f}", f"{row['images_per_second']:.1f}")
    Console().print(table)
    atomic_write_json(args.out, {"threads": args.threads, "batch_size": args.batch_size, "rows": rows,
                                 **provenance()})


if __name__ == "__main__":
    main()
