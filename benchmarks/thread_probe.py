"""How much torch's thread count and the CPU's kernels move the embedded model's numbers: the same inputs through
the text encoder, one UNet prediction, a VAE decoding, the judge's features, one Adam step and five DDIM steps,
with 2 threads (the reference), with 1, and with 2 threads on the AVX2 kernels (what a CPU without AVX-512
runs), each in its own process; prints the largest difference of each from the reference (0 means
bit-identical) and writes JSON. Quoted in docs/reliability.md.

    python benchmarks/thread_probe.py [--out runs/thread-probe.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file


def probe(threads: int, path: Path) -> None:
    """One process's outputs, saved as safetensors."""
    from score_erasure.backends import denoiser_for
    from score_erasure.models import load_pipeline
    from score_erasure.options import set_run_options
    from score_erasure.toyworld.judge import WorldJudge

    set_run_options(threads=threads)
    d = denoiser_for(load_pipeline("embedded"))
    gen = torch.Generator().manual_seed(0)
    cond = d.encode(["a red star", "a picture of a circle"] * 4)
    x = torch.randn(8, 4, 8, 8, generator=gen)
    t = d.timesteps(25)[[3] * 8]
    with torch.no_grad():
        pred, image = d.predict(x, t, cond), d.decode(x)
    pixels = (image.permute(0, 2, 3, 1).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    features = WorldJudge.load().features(pixels)
    d.network.requires_grad_(True)
    opt = torch.optim.Adam(d.network.parameters(), lr=1e-3)
    torch.nn.functional.mse_loss(d.predict(x, t, cond), torch.zeros_like(x)).backward()
    opt.step()
    weights = torch.cat([p.detach().flatten() for p in d.network.parameters()])
    x0 = d.sample(cond[:2], 5, guidance=3.0, generator=torch.Generator().manual_seed(1))
    outputs = {"text encoding": cond, "UNet prediction": pred, "VAE decoding": image, "judge features": features,
               "weights after one Adam step": weights, "5 DDIM steps": x0}
    save_file({k: v.detach().contiguous() for k, v in outputs.items()}, str(path))


# name -> (torch threads, environment): the AVX2 variant caps ATen's, oneDNN's and MKL's code paths at AVX2
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
VARIANTS = {"2 threads": (2, {}), "1 thread": (1, {}), "2 threads, AVX2 kernels": (2, AVX2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/thread-probe.json"))
    parser.add_argument("--child", nargs=2, metavar=("THREADS", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        probe(int(args.child[0]), Path(args.child[1]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        outputs = {}
        for name, (threads, env) in VARIANTS.items():
            path = Path(tmp) / f"{len(outputs)}.safetensors"
            subprocess.run([sys.executable, __file__, "--child", str(threads), str(path)], check=True,
                           env={**os.environ, **env})
            outputs[name] = load_file(str(path))
    reference, *others = outputs
    rows = {other: {k: float((outputs[reference][k].double() - v.double()).abs().max())
                    for k, v in outputs[other].items()} for other in others}
    print("| output | " + " | ".join(f"{o} vs {reference}" for o in others) + " |\n|---|" + "---|" * len(others))
    for k in outputs[reference]:
        print(f"| {k} | " + " | ".join(f"{rows[o][k]:.2g}" for o in others) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")

if __name__ == "__main__":
    main()
