"""Speed-up of sharded generation: the same `score generate` in one process and in N (torchrun), each process on
one thread, on free cores. Prints a table and writes JSON; the images must be identical (checked).

    python benchmarks/parallel_speedup.py --out runs/parallel-speedup.json [--processes 2] [--images 64]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def _run(command: list[str], out: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    subprocess.run([*command, "--out", str(out)], env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def _images(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(f)) for f in sorted((folder / "images").rglob("*.png"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--model", default="embedded")
    args = parser.parse_args()
    from score_erasure.io import atomic_write_json
    from score_erasure.provenance import provenance

    prompts = ["a red star", "a blue circle", "a striped heart", "a green square on fire"]
    generate = ["generate", "--model", args.model, "-n", str(args.images // len(prompts)), "--batch-size",
                str(args.batch_size), *[a for p in prompts for a in ("-p", p)]]
    one = [sys.executable, "-m", "score_erasure", *generate]
    many = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.processes), "-m",
            "score_erasure", *generate]
    with tempfile.TemporaryDirectory() as tmp:
        seconds_one = _run(one, Path(tmp) / "one")
        seconds_many = _run(many, Path(tmp) / "many")
        same = all(np.array_equal(a, b) for a, b in zip(_images(Path(tmp) / "one"), _images(Path(tmp) / "many"),
                                                          strict=True))
    result = {"images": args.images, "batch_size": args.batch_size, "processes": args.processes,
              "seconds_one": seconds_one, "seconds_many": seconds_many, "speedup": seconds_one / seconds_many,
              "identical_images": same, "cpus": os.cpu_count()}
    atomic_write_json(args.out, provenance(**result))
    print(f"| processes | seconds | speed-up | identical images |\n|---|---|---|---|\n"
          f"| 1 | {seconds_one:.1f} | 1.00 | |\n"
          f"| {args.processes} | {seconds_many:.1f} | {seconds_one / seconds_many:.2f} | {same} |")


if __name__ == "__main__":
    main()
