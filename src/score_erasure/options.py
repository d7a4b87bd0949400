"""Run options: how every command loads models (the `score` options before the command name).

A leaf module: backends read the frozen copy's precision here and the model resolver the weights' precision
and device, without importing anything above them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from score_erasure import parallel
from score_erasure.errors import UserError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class RunOptions:
    """Precision, device, gradient checkpointing, and the precision of the frozen base copy that methods keep
    (bf16 halves it)."""

    dtype: str = "fp32"
    device: str = "auto"
    gradient_checkpointing: bool = False
    frozen_dtype: str | None = None
    # CPU threads of torch's intra-op pool, fixed rather than one per core: CPU kernels split their sums by thread,
    # so the thread count decides the last bits of every result, and a fine-tune amplifies them (docs/reliability.md)
    threads: int | None = None
    # PyTorch's cuDNN attention kernel; with torch 2.11 on an H200 its backward failed on FLUX.1-dev's 4,608-token
    # joint attention (docs/results.md, the GPU check), so training there needs it off
    cudnn_attention: bool = True

    def torch_device(self) -> torch.device:
        if self.device != "auto":
            return torch.device(self.device)
        if torch.cuda.is_available():
            return parallel.state().device  # this process's GPU under accelerate launch
        return torch.device("cpu")


OPTIONS = RunOptions()


def set_run_options(**options) -> None:
    for name, value in options.items():
        if name in ("dtype", "frozen_dtype") and value is not None and value not in DTYPES:
            raise UserError(f"unknown --{name.replace('_', '-')} '{value}'; choose one of: {', '.join(DTYPES)}")
        if name == "threads" and value is not None and value < 1:
            raise UserError(f"--threads must be 1 or more (got {value})")
        setattr(OPTIONS, name, value)
    if OPTIONS.threads is not None:
        torch.set_num_threads(OPTIONS.threads)
    torch.backends.cuda.enable_cudnn_sdp(OPTIONS.cudnn_attention)
    try:
        OPTIONS.torch_device()
    except RuntimeError as exc:
        raise UserError(f"unknown --device '{OPTIONS.device}'; use cpu, cuda, cuda:N or auto") from exc
