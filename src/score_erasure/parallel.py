"""Several processes (and GPUs) under `accelerate launch`: image generation is sharded, everything else is not.

`accelerate launch --num_processes N -m score_erasure <command> ...` runs the same command in N processes. Each
generates its share of the images (whole batches, dealt round-robin, so every image comes from the same batch
composition as in one process: the same pixels), the shares are gathered, and every process continues with all
the images; only the main process writes files (`io.atomic_write`) and shows progress. Without a launcher this
is one process and costs nothing.
"""

from __future__ import annotations

from functools import cache


@cache
def state():
    """accelerate's PartialState: process index, count and device (one process when not launched)."""
    from accelerate import PartialState

    return PartialState()


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
