"""The fine-tuning loop shared by the iterative methods: masked updates, checkpoints, resume, NaN guard.

A method supplies `step(k) -> (loss, terms)`; the loop owns the optimiser, the progress bar, the
checkpoint file and the rule that a NaN loss stops the run at the last good checkpoint.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from score_erasure import parallel
from score_erasure.errors import UserError
from score_erasure.io import load_tensors, optimizer_tensors, restore_optimizer, save_tensors
from score_erasure.progress import progress_bar

StepFn = Callable[[int], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class Checkpointing:
    """Where and how often a run checkpoints; `resume` continues from the file if it exists. `run` (what the
    erasure is: method, concepts, config, base) is stored in the file, so that a resume can check it is its own."""

    path: Path | None = None
    every: int = 50
    resume: bool = False
    run: dict = field(default_factory=dict)


@dataclass
class Trace:
    """Per-step loss terms, kept for erase.json (the MI trace among them)."""

    rows: list[dict[str, float]] = field(default_factory=list)
    info: dict[str, float] = field(default_factory=dict)

    def series(self, key: str) -> list[float]:
        return [r[key] for r in self.rows if key in r]


def _state(params: dict[str, nn.Parameter], optimizers: dict[str, torch.optim.Optimizer],
           modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    tensors = {f"param.{k}": v for k, v in params.items()}
    for name, o in optimizers.items():
        tensors |= optimizer_tensors(o, f"opt_{name}")
    for name, module in modules.items():
        tensors |= {f"module_{name}.{k}": v for k, v in module.state_dict().items()}
    return tensors


def _restore(tensors: dict[str, torch.Tensor], params: dict[str, nn.Parameter],
             optimizers: dict[str, torch.optim.Optimizer], modules: dict[str, nn.Module]) -> None:
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(tensors[f"param.{k}"])
    for name, o in optimizers.items():
        restore_optimizer(o, tensors, f"opt_{name}")
    for name, module in modules.items():
        pre = f"module_{name}."
        module.load_state_dict({k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)})


def finetune(params: dict[str, nn.Parameter], step: StepFn, iterations: int, lr: float, *, label: str,
             mask: dict[str, torch.Tensor] | None = None, checkpointing: Checkpointing | None = None,
             extra_modules: dict[str, nn.Module] | None = None,
             extra_optimizers: dict[str, torch.optim.Optimizer] | None = None,
             show_progress: bool = True, lr_at: Callable[[int], float] | None = None) -> Trace:
    """Adam on `params` for `iterations` steps of `step`; gradients are multiplied by `mask` where given; `lr_at(k)`,
    where given, is step k's learning rate (alternating objectives with rates of their own).

    Extra modules and optimisers (a discriminator and its Adam) are checkpointed alongside. Under `accelerate
    launch` the steps are data-parallel: gradients of `params` averaged, extra modules' parameters averaged."""
    ckpt = checkpointing or Checkpointing()
    opt = torch.optim.Adam(params.values(), lr=lr)
    optimizers, modules = {"main": opt, **(extra_optimizers or {})}, extra_modules or {}
    trace, start = Trace(), 0
    if ckpt.path is not None and ckpt.resume and ckpt.path.exists():
        tensors, meta = load_tensors(ckpt.path)
        _restore(tensors, params, optimizers, modules)
        start, trace = int(meta["step"]), Trace(meta.get("trace", []))

    def save(k: int) -> None:
        if ckpt.path is not None:
            save_tensors(_state(params, optimizers, modules), ckpt.path, {"step": k, "trace": trace.rows,
                                                                          "run": ckpt.run})

    with progress_bar() as bar:
        task = bar.add_task(label, total=iterations, completed=start, info="", visible=show_progress)
        for k in range(start, iterations):
            loss, terms = step(k)
            if not math.isfinite(loss.item()):
                where = f"; the last good checkpoint is {ckpt.path}" if ckpt.path and ckpt.path.exists() else ""
                raise UserError(f"{label}: the loss became {loss.item()} at step {k}{where}; lower the "
                                "learning rate (--config) and rerun with --resume")
            if lr_at is not None:
                for group in opt.param_groups:
                    group["lr"] = lr_at(k)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            parallel.average_gradients(params.values())  # data-parallel under accelerate launch; else nothing
            if mask is not None:
                for name, p in params.items():
                    if p.grad is not None:
                        p.grad.mul_(mask[name])
            opt.step()
            parallel.average_parameters(modules.values())
            trace.rows.append({"step": k, "loss": loss.item(), **terms})
            bar.update(task, advance=1, info=" ".join(f"{n} {v:.3g}" for n, v in terms.items()))
            if (k + 1) % ckpt.every == 0 or k + 1 == iterations:
                save(k + 1)
    parallel.assert_in_sync(list(params.values()))
    return trace


def trainable(denoiser, group: str) -> dict[str, nn.Parameter]:
    """Freeze the whole network, then unfreeze and return the parameters of `group`."""
    denoiser.network.requires_grad_(False)
    params = denoiser.parameters(group)
    for p in params.values():
        p.requires_grad_(True)
    return params


LORA_ADAPTER = "erasure"


def lora_trainable(denoiser, group: str, rank: int, seed: int = 0, pattern: str = "") -> dict[str, nn.Parameter]:
    """Freeze the network and attach rank-`rank` LoRA adapters (peft) to the linear layers of `group` (those whose
    name matches `pattern`, where given); returns the adapters' parameters. The only way to fine-tune a 12B FLUX
    transformer on one GPU; `merge_lora` folds them back into the weights, so the erased network has its original
    layout."""
    from peft import LoraConfig, inject_adapter_in_model

    network = denoiser.network.requires_grad_(False)
    modules = dict(network.named_modules())
    targets = sorted({name.rsplit(".", 1)[0] for name in denoiser.parameters(group)
                      if isinstance(modules.get(name.rsplit(".", 1)[0]), nn.Linear)
                      and re.search(pattern, name.rsplit(".", 1)[0])})
    if not targets:
        raise UserError(f"parameter group '{group}' has no linear layers to put LoRA adapters on")
    with torch.random.fork_rng(devices=[]):  # the adapters' init follows the method's seed, not the caller's RNG
        torch.manual_seed(seed)
        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets), network,
                                adapter_name=LORA_ADAPTER)
    return {name: p for name, p in network.named_parameters() if f".{LORA_ADAPTER}." in name}


def merge_lora(network: nn.Module) -> None:
    """Fold every LoRA adapter into its base weight and put the plain layer back in its place."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(network.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(network.get_submodule(parent_name) if parent_name else network, child, module.get_base_layer())
    network.__dict__.pop("peft_config", None)  # no adapter left: a later injection starts afresh
