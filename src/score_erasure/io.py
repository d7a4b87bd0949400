"""Safe file output: atomic writes, and tensors with JSON metadata in safetensors (never pickles)."""

from __future__ import annotations

import atexit
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from score_erasure import parallel
from score_erasure.errors import UserError

LOCK = ".score.lock"  # in an output folder while a command writes it: {"pid", "command", "since"}
_held: set[Path] = set()


#: What each command leaves in its `--out` folder to say that a run is there (its record, written last; erase's
#: checkpoint while it trains). A folder holding any of them is written into again only when the user says how.
RUN_FILES = {"erase": ("erase.json", "checkpoint.safetensors"), "evaluate": ("report.json",),
             "attack": ("report.json",), "certify": ("report.json",), "bench": ("results.json",),
             "generate": ("generate.json",), "train": ("train.json",), "merge": ("model_index.json",),
             "leaderboard": ("leaderboard.json",)}

RESUMABLE = ("erase", "attack", "bench", "train", "leaderboard")


def output_folder(path: Path, kind: str, *, resume: bool = False, overwrite: bool = False) -> Path:
    """The `--out` folder of a `kind` command, created and claimed now, or a one-line error before any work: a
    folder that cannot be written, that another running command is writing, or that holds another run (refused
    unless `overwrite`, or `resume` and the run there is of this kind). The claim is a lock file naming the
    holder's pid; a lock whose process is gone is stale and taken over. `release_folder` (or the process's exit)
    gives it back."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-check.")
        probe.close()
    except OSError as exc:
        raise UserError(f"cannot write to the output folder '{path}' ({exc.strerror or exc}); choose another "
                        "--out") from exc
    if parallel.is_main():
        _claim(path / LOCK)
        try:
            _refuse_another_run(path, kind, resume, overwrite)
        except UserError:
            release_folder(path)
            raise
    return path


def _refuse_another_run(path: Path, kind: str, resume: bool, overwrite: bool) -> None:
    found = sorted({name for names in RUN_FILES.values() for name in names if (path / name).is_file()})
    if not found or overwrite or (resume and set(found) <= set(RUN_FILES[kind])):
        return
    ours = set(found) <= set(RUN_FILES[kind])
    ways = "pass --overwrite to replace it" + (", --resume to continue it" if ours and kind in RESUMABLE else "")
    raise UserError(f"'{path}' already holds a run ({', '.join(found)}); {ways}, or choose another --out")


def _claim(lock: Path) -> None:
    while lock not in _held:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(lock)
            if holder is not None and holder.get("pid") != os.getpid() and _alive(holder.get("pid")):
                raise UserError(f"'{lock.parent}' is being written by another command (pid {holder['pid']}: "
                                f"{holder.get('command', '?')}, since {holder.get('since', '?')}); wait for it to "
                                "finish or choose another --out") from None
            lock.unlink(missing_ok=True)  # stale: its process is gone (or it is ours)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "command": " ".join(sys.argv),
                       "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, f)
        _held.add(lock)


def _holder(lock: Path) -> dict | None:
    try:
        return json.loads(lock.read_text())
    except (OSError, ValueError):
        return None  # unreadable: half written by a process killed at that instant, so stale


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def release_folder(path: Path) -> None:
    """Give back the claim on an output folder (its lock file) once a command has written everything."""
    lock = Path(path) / LOCK
    if lock in _held:
        _held.discard(lock)
        lock.unlink(missing_ok=True)


@atexit.register
def release_all_folders() -> None:
    """Give back every output folder this process claimed."""
    for lock in list(_held):
        lock.unlink(missing_ok=True)
    _held.clear()


def atomic_write(path: Path, write) -> None:
    """`write(tmp)` then rename onto `path`: readers never see a half-written file. Under `accelerate launch`
    only the main process writes (the others hold the same results; see `parallel`). The file gets the mode a
    plain write would (0666 less the umask), not mkstemp's private 0600, so a colleague can read it."""
    if not parallel.is_main():
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    current = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(current)
    return current


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict) -> None:
    """Write tensors atomically; `metadata` is stored as JSON in the safetensors header."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"json": json.dumps(metadata, default=str)}))


def load_metadata(path: Path) -> dict:
    """The JSON metadata of a `save_tensors` file, without reading its tensors."""
    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("json", "{}"))


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    return load_file(str(path)), load_metadata(path)


def optimizer_tensors(opt: torch.optim.Optimizer, prefix: str = "optim") -> dict[str, torch.Tensor]:
    """An optimizer's per-parameter state as named tensors (`prefix.i.key`), for a safetensors checkpoint."""
    return {f"{prefix}.{i}.{k}": v for i, s in opt.state_dict()["state"].items() for k, v in s.items()
            if torch.is_tensor(v)}


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], prefix: str = "optim") -> None:
    """Inverse of `optimizer_tensors`; hyperparameters stay those the optimizer was built with."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith(prefix + "."):
            _, i, k = name.split(".", 2)
            state.setdefault(int(i), {})[k] = value
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})
