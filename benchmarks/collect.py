"""Collect `score bench` folders into one markdown table (for docs/results.md).

    python benchmarks/collect.py runs/bench/object runs/bench/style ... > table.md
    python benchmarks/collect.py --asr runs/asr/object runs/asr/unsafe > asr.md   # ASR columns, with intervals

A bench still running (or stopped, to be resumed) has no results.json yet: its finished rows are read from
`<method>/row.json`, in the order they finished.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = ("acc_e", "acc_g", "acc_s", "h", "fid", "kid", "ssim")


def cell(metric: dict | None, interval: bool) -> str:
    if metric is None:
        return ""
    v = metric["value"]
    text = f"{v:.3f}" if abs(v) < 10 else f"{v:.0f}"
    if interval:
        lo, hi = metric["ci_low"], metric["ci_high"]
        text += f" [{lo:.2f}, {hi:.2f}]"
    return text


def rows(folder: Path) -> tuple[dict, list[dict]]:
    """(task/concept meta, rows) of a finished bench, or of the rows a running bench has finished."""
    done = folder / "results.json"
    if done.is_file():
        results = json.loads(done.read_text())
        return results, results["rows"]
    saved = sorted(folder.glob("*/row.json"), key=lambda f: f.stat().st_mtime)
    keys = [json.loads(f.read_text()) for f in saved]
    meta = {"task": keys[0]["key"]["task"], "concept": keys[0]["key"]["concept"]} if keys else {}
    return meta, [k["row"] for k in keys]


def asr_table(folders: list[str]) -> None:
    attacks = ("unlearndiff", "p4d", "ring-a-bell", "inversion", "paraphrase")
    print("| task / concept | method | acc_e | " + " | ".join(attacks) + " |")
    print("|---" * (len(attacks) + 3) + "|")
    for folder in folders:
        meta, found = rows(Path(folder))
        for row in found:
            cells = [cell(row["metrics"].get(f"asr_{a}"), True) for a in attacks]
            print(f"| {meta['task']} / {meta['concept']} | {row['method']} | {cell(row['metrics'].get('acc_e'), False)}"
                  " | " + " | ".join(cells) + " |")


def main(folders: list[str]) -> None:
    if folders and folders[0] == "--asr":
        asr_table(folders[1:])
        return
    print("| task / concept | method | " + " | ".join(COLUMNS) + " | erase s | peak RSS MB |")
    print("|---" * (len(COLUMNS) + 4) + "|")
    for folder in folders:
        results, found = rows(Path(folder))
        for row in found:
            if row["status"] != "ok":
                print(f"| {results['task']} / {results['concept']} | {row['method']} | failed: {row['error']} |")
                continue
            cells = [cell(row["metrics"].get(k), k == "h") for k in COLUMNS]
            erase = "" if row.get("erase_seconds") is None or row["method"] == "none" else f"{row['erase_seconds']:.1f}"
            rss = "" if row.get("peak_rss_mb") is None or row["method"] == "none" else f"{row['peak_rss_mb']:.0f}"
            print(f"| {results['task']} / {results['concept']} | {row['method']} | " + " | ".join(cells)
                  + f" | {erase} | {rss} |")


if __name__ == "__main__":
    main(sys.argv[1:])
