"""GPU check: time one step of SCORE, ESD, SDD and SalUn, and whole UCE, MACE, RECE, TRCE, Semantic Surgery and
CGCE runs, on full-size SD1.5 and FLUX.1-dev architectures with random weights (speed and memory do not depend
on the weights), and their peak memory.

    python benchmarks/gpu_check.py --out gpu_check.json             # on a machine with a CUDA GPU
    python benchmarks/gpu_check.py --tiny --device cpu --out x.json  # the same code path in seconds (tests, CPU)

Nothing is downloaded: the architectures are built from their published configs; the MiniLM word-piece
tokenizer stands in for CLIP's and T5's (tokenisation does not change the cost of a step). A method's
"step" time is (time of a run with 1 + k steps - time with 1 step) / k, so setup (saliency maps, the
discriminator's pre-training, the frozen copy) is reported apart from the per-step cost.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import torch

from score_erasure.backends import denoiser_for
from score_erasure.methods import get_method
from score_erasure.spec import ConceptSpec
from score_erasure.testing import tiny_flux_pipeline, tiny_sd_pipeline

SPEC = ConceptSpec.from_words(["nudity"], synonyms=["naked"], preserve=["a person in a coat"])


def _tokenizer(length: int):
    from transformers import BertTokenizer

    from score_erasure.toyworld.model import minilm_path

    return BertTokenizer.from_pretrained(minilm_path(), model_max_length=length)


@contextlib.contextmanager
def built_on(device: torch.device, dtype: torch.dtype):
    """Modules built inside are created directly on `device` in `dtype` (a 12B model never sits in fp32 on CPU)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            yield
    finally:
        torch.set_default_dtype(previous)


def _clip_l(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(vocab_size=tokenizer.vocab_size, hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                        eos_token_id=tokenizer.sep_token_id))


def sd15(dtype: torch.dtype, device: torch.device):
    """SD1.5's architecture: UNet 860M (diffusers' default UNet2DConditionModel config), CLIP ViT-L/14 text
    model, the 4-level VAE; 512x512 images."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = _tokenizer(77)
    with built_on(device, dtype):
        text = _clip_l(tokenizer)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
                            sample_size=512)
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
    return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(steps_offset=1, clip_sample=False), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def flux_dev(dtype: torch.dtype, device: torch.device):
    """FLUX.1-dev's transformer (12B, guidance-distilled: diffusers' default FluxTransformer2DModel config with the
    guidance embedding), its 16-channel VAE, CLIP-L for the pooled vector and a 1-layer T5 of T5-XXL's width
    (the text encoders run once per prompt, not per step); 1024x1024 images (4,096 image tokens)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    tokenizer = _tokenizer(77)
    with built_on(device, dtype):
        transformer = FluxTransformer2DModel(guidance_embeds=True)
        t5 = T5EncoderModel(T5Config(vocab_size=tokenizer.vocab_size, d_model=4096, d_ff=10240, d_kv=64, num_layers=1,
                                     num_heads=64))
        clip = _clip_l(tokenizer)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=16,
                            sample_size=1024, shift_factor=0.1159, scaling_factor=0.3611, use_quant_conv=False,
                            use_post_quant_conv=False)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=tokenizer, text_encoder_2=t5,
                        tokenizer_2=tokenizer, transformer=transformer)


# The runs of the check: (architecture, method, config). Steps of the trajectory kept short (setup samples
# trajectories); the memory options are those docs/methods.md recommends per model.
RUNS = [
    ("sd1.5", "score", dict(steps=10, d_pretrain=2, saliency_seeds=(1, 2), saliency_prompts=1, bank_per_prompt=1)),
    ("sd1.5", "esd-x", dict(steps=10)),
    ("sd1.5", "esd-u", dict(steps=10)),
    ("sd1.5", "uce", {}),
    ("sd1.5", "mace", dict(images=2, steps=10)),  # 2 base images for the masks, 50 LoRA steps, the fusion
    ("sd1.5", "rece", {}),
    ("sd1.5", "semantic-surgery", {}),
    ("sd1.5", "trce", dict(trajectories=8, preserve_trajectories=2, steps=10, early=5, iterations=10)),
    ("sd1.5", "cgce", {}),
    ("sd1.5", "sdd", dict(steps=10)),
    ("sd1.5", "salun", dict(images=8, batch=2, steps=10)),  # the mask over all 860M weights, then its steps
    ("sd1.5", "advunlearn", dict(warmup=0, trajectories=4, retain_trajectories=4, steps=10)),  # steps with the attack
    ("sd1.5", "trace", dict(steps=10, d_pretrain=2, saliency_seeds=(1, 2), saliency_prompts=1, bank_per_prompt=1)),
    ("sd1.5", "dumo", dict(trajectories=4, retain_trajectories=4, steps=10)),
    ("flux.1-dev", "esd", dict(steps=10)),  # LoRA on the text attention, EraseAnything's form
    ("flux.1-dev", "score", dict(group="xattn", steps=10, d_pretrain=2, saliency_seeds=(1, 2), saliency_prompts=1,
                                 bank_per_prompt=1)),
    ("flux.1-dev", "uce", dict(samples=2)),
    ("flux.1-dev", "rece", dict(samples=2)),
    ("flux.1-dev", "semantic-surgery", {}),
    ("flux.1-dev", "cgce", {}),
    ("flux.1-dev", "sdd", dict(steps=10)),
    ("flux.1-dev", "advunlearn", dict(warmup=0, trajectories=4, retain_trajectories=4, steps=10)),
    ("flux.1-dev", "eraseanything", dict(steps=10, images=2)),  # a step: erasure and preservation in turn
]
ITERATIVE = {"score", "esd", "esd-x", "esd-u", "sdd", "salun", "advunlearn", "trace", "dumo", "eraseanything"}


def _peak_gb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def _reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _timed_fit(build, name: str, config: dict, device: torch.device) -> tuple[float, float]:
    """Seconds and peak GB of one fit on a fresh pipeline."""
    pipe = build()
    denoiser = denoiser_for(pipe)
    method = get_method(name)
    _reset(device)
    start = time.perf_counter()
    method.fit(denoiser, SPEC, method.config(config), show_progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds, peak = time.perf_counter() - start, _peak_gb(device)
    del pipe, denoiser
    _reset(device)
    return seconds, peak


def check(tiny: bool, device: torch.device, dtype: torch.dtype, extra_steps: int = 3,
          only: list[str] | None = None) -> list[dict]:
    from score_erasure.options import set_run_options

    set_run_options(device=str(device), frozen_dtype={torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype))
    builders = {"sd1.5": (lambda: tiny_sd_pipeline(0).to(device)) if tiny else (lambda: sd15(dtype, device)),
                "flux.1-dev": ((lambda: tiny_flux_pipeline(0, guidance_embeds=True, encoders="clip+t5").to(device))
                               if tiny else (lambda: flux_dev(dtype, device)))}
    rows, warm = [], set()
    for arch, name, config in RUNS:
        if only and f"{arch}/{name}" not in only:
            continue
        if tiny and "steps" in config:  # the code path, not the cost: short trajectories
            config = {**config, "steps": 4}
        row = {"architecture": arch, "method": name, "config": config, "device": str(device), "dtype": str(dtype)}
        try:
            if name in ITERATIVE and arch not in warm:  # untimed: the first fit on a device pays kernel warm-up
                _timed_fit(builders[arch], name, {**config, "iterations": 1}, device)
                warm.add(arch)
            if name in ITERATIVE:
                one, peak = _timed_fit(builders[arch], name, {**config, "iterations": 1}, device)
                more, peak_more = _timed_fit(builders[arch], name, {**config, "iterations": 1 + extra_steps}, device)
                row |= {"setup_s": one, "step_s": (more - one) / extra_steps, "peak_gb": max(peak, peak_more)}
            else:
                total, peak = _timed_fit(builders[arch], name, config, device)
                row |= {"total_s": total, "peak_gb": peak}
        except torch.cuda.OutOfMemoryError as exc:
            row["error"] = f"out of memory: {str(exc).splitlines()[0][:200]}"
            _reset(device)
        except RuntimeError as exc:  # a CUDA fault leaves the context unusable: recorded, the run ends here
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
            break
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict], card: str) -> str:
    lines = [f"GPU check on {card}", "", "| architecture | method | setup s | step s | total s | peak GB |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{r[k]:.2f}" if isinstance(r.get(k), float) else r.get("error", "") if k == "peak_gb" else ""
                 for k in ("setup_s", "step_s", "total_s", "peak_gb")]
        lines.append(f"| {r['architecture']} | {r['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tiny", action="store_true", help="tiny random pipelines instead of the full sizes")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bf16", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--only", action="append", metavar="ARCH/METHOD",
                        help="run only these rows (repeatable), e.g. flux.1-dev/esd: one process per row keeps a "
                             "CUDA fault in one row from ending the others")
    parser.add_argument("--no-cudnn-attention", action="store_true",
                        help="turn off PyTorch's cuDNN attention kernel (flash / memory-efficient kernels instead); "
                             "with torch 2.11 on an H200 its backward failed on FLUX's 4,608-token joint attention")
    args = parser.parse_args()
    if args.no_cudnn_attention:
        from score_erasure.options import set_run_options

        set_run_options(cudnn_attention=False)
    from score_erasure.io import atomic_write_json, atomic_write_text
    from score_erasure.options import DTYPES
    from score_erasure.provenance import provenance

    device = torch.device(args.device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows = check(args.tiny, device, DTYPES[args.dtype], only=args.only)
    atomic_write_json(args.out, provenance(card=card, tiny=args.tiny, rows=rows))
    atomic_write_text(args.out.with_suffix(".md"), table(rows, card))
    print(table(rows, card))


if __name__ == "__main__":
    main()
