"""How much torch's thread count moves the embedded model's numbers: the same inputs through the text encoder,
one UNet prediction, a VAE decoding, the judge's features, one Adam step and five DDIM steps, with 1 and with 2
threads, each in its own process; prints the largest difference of each (0 means bit-identical) and writes
JSON. Quoted in docs/reliability.md.

    python benchmarks/thread_probe.py [--out runs/thread-probe.json]
"""

from __future__ import annotations

import argparse
import json
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/thread-probe.json"))
    parser.add_argument("--child", nargs=2, metavar=("THREADS", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        probe(int(args.child[0]), Path(args.child[1]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        runs = {n: Path(tmp) / f"{n}.safetensors" for n in (1, 2)}
        for n, path in runs.items():
            subprocess.run([sys.executable, __file__, "--child", str(n), str(path)], check=True)
        one, two = (load_file(str(p)) for p in runs.values())
    rows = {k: float((one[k].double() - two[k].double()).abs().max()) for k in one}
    print("| output | max abs difference, 1 vs 2 threads |\n|---|---|")
    for name, diff in rows.items():
        print(f"| {name} | {diff:.2g} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
