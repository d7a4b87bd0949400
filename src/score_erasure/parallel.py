"""Several processes (and GPUs) under `accelerate launch`: sharded generation, data-parallel erasure.

`accelerate launch --multi_gpu --num_processes N -m score_erasure <command> ...` (GPUs) or `torchrun
--nproc_per_node N -m score_erasure <command> ...` (CPU processes) runs the same command in N processes. Each
generates its share of the images (whole batches, dealt round-robin, so every image comes from the same batch
composition as in one process: the same pixels), the shares are gathered, and every process continues with all
the images; only the main process writes files (`io.atomic_write`) and shows progress. Erasure fine-tuning is
data-parallel: each process draws its own step (`step_key` adds its rank) and gradients are averaged
(`average_gradients`). Without a launcher this is one process and costs nothing.
"""

from __future__ import annotations

from functools import cache

import torch
import torch.distributed as dist


@cache
def state():
    """accelerate's PartialState: process index, count and device (one process when not launched)."""
    from accelerate import PartialState

    # On a machine without CUDA, several processes (torchrun, or accelerate launch --multi_gpu) are MULTI_CPU
    # with gloo only when PartialState is told it runs on CPU.
    return PartialState(cpu=not torch.cuda.is_available())


def is_main() -> bool:
    return state().is_main_process


def my_share(count: int) -> range:
    """The indices of `count` work items this process does."""
    s = state()
    return range(s.process_index, count, s.num_processes)


def gather(items: dict) -> dict:
    """Every process's dict merged, on every process."""
    s = state()
    if s.num_processes == 1:
        return items
    from accelerate.utils import gather_object

    merged: dict = {}
    for part in gather_object([items]):
        merged.update(part)
    return merged


def barrier() -> None:
    state().wait_for_everyone()


def distributed() -> bool:
    return state().num_processes > 1


def step_key(*key: int) -> list[int]:
    """Entropy for one training step's randomness: `key`, plus this process's rank when data-parallel, so that
    every process draws its own batch (one process: exactly `key`, so results do not change)."""
    return [*key, state().process_index] if distributed() else list(key)


def average_gradients(params) -> None:
    """All-reduce the gradients of `params` to their mean over the processes."""
    if not distributed():
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= state().num_processes


def average_parameters(modules) -> None:
    """Average the parameters of `modules` over the processes (an auxiliary network that each process updates
    with its own step, such as SCORE's discriminator, stays one network)."""
    if not distributed():
        return
    with torch.no_grad():
        for module in modules:  # buffers too: spectral norm's power-iteration vectors
            for p in [*module.parameters(), *(b for b in module.buffers() if b.is_floating_point())]:
                dist.all_reduce(p.data, op=dist.ReduceOp.SUM)
                p.data /= state().num_processes


def assert_in_sync(tensors) -> None:
    """Raise if the processes' copies of `tensors` differ (a data-parallel run must end with one model)."""
    if not distributed():
        return
    checksum = torch.stack([t.detach().double().sum() for t in tensors]).sum().reshape(1)
    low, high = checksum.clone(), checksum.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if not torch.equal(low, high):
        raise RuntimeError("data-parallel processes ended with different weights; please report this")
