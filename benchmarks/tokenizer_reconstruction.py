"""How much of the world a token model's tokenizer keeps: fresh renders encoded to codes and decoded back, read by
the world's judge (accuracy per head against the renders' own labels, beside the judge's accuracy on the renders
themselves), with the pixel error and the share of the codebook used. A generator cannot draw better than its
tokenizer decodes, so this bounds every autoregressive row.

    python benchmarks/tokenizer_reconstruction.py --out runs/tokenizer.json [--models embedded-ar,embedded-var]
        [--images 1000] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from score_erasure.backends import token_generator_of
from score_erasure.io import atomic_write_json
from score_erasure.models import load_pipeline
from score_erasure.provenance import provenance
from score_erasure.toyworld import judge as world_judge

HEADS = ("shape", "colour", "style", "fire")


def reconstruction(name: str, images: np.ndarray, labels: dict, judge: world_judge.WorldJudge) -> dict:
    generator = token_generator_of(load_pipeline(name))
    start = time.perf_counter()
    with torch.no_grad():
        codes = torch.cat([generator.image_codes(torch.from_numpy(images[i:i + 250]).float() / 255)
                           for i in range(0, len(images), 250)])
        decoded = torch.cat([generator.decode(codes[i:i + 250]) for i in range(0, len(codes), 250)]).numpy()
    seconds = time.perf_counter() - start
    verdicts = judge.judge((decoded * 255).round().astype(np.uint8))
    accuracy = {h: float((verdicts.probs[h].argmax(1) == labels[h].numpy()).mean()) for h in HEADS}
    return {"model": name, "codes_per_image": codes.shape[1], "codebook": generator.codebook_size,
            "codes_used": int(codes.unique().numel()), "mse": float(((decoded - images / 255) ** 2).mean()),
            "accuracy": accuracy, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", default="embedded-ar,embedded-var")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=12_345)  # the judge check's renders: no training saw them
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images, labels = world_judge.render_labelled(args.images, seed=args.seed)
    judge = world_judge.WorldJudge.load()
    renders = judge.judge(images)
    rows = [{"model": "renders", "accuracy": {h: float((renders.probs[h].argmax(1) == labels[h].numpy()).mean())
                                              for h in HEADS}}]
    rows += [reconstruction(name, images, labels, judge) for name in args.models.split(",")]
    table = Table(title=f"tokenizer reconstructions of {args.images} fresh renders, judged ({args.threads} thread)")
    for column in ("model", "codes", "used", "mse", *HEADS):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in rows:
        table.add_row(row["model"], str(row.get("codes_per_image", "")),
                      f"{row['codes_used']}/{row['codebook']}" if "codes_used" in row else "",
                      f"{row['mse']:.4f}" if "mse" in row else "", *(f"{row['accuracy'][h]:.3f}" for h in HEADS))
    Console().print(table)
    atomic_write_json(args.out, {"rows": rows, "images": args.images, "seed": args.seed,
                                 **provenance(config=vars(args) | {"out": str(args.out)})})


if __name__ == "__main__":
    main()
