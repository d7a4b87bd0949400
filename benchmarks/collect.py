"""Collect `score bench` folders into one markdown table (for docs/results.md).

    python benchmarks/collect.py runs/bench/object runs/bench/style ... > table.md
    python benchmarks/collect.py --v2 runs/bench/object ... > table.md   # + acc_c, acc_n, fid as a ratio to its floor
    python benchmarks/collect.py --asr runs/asr/object runs/asr/unsafe > asr.md   # ASR columns, with intervals
    python benchmarks/collect.py --cert runs/cert/object > cert.md   # every METHOD/certify/report.json below

A bench still running (or stopped, to be resumed) has no results.json yet: its finished rows are read from
`<method>/row.json`, in the order they finished.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = ("acc_e", "acc_g", "acc_s", "h", "fid", "kid", "ssim")
V2_COLUMNS = ("acc_e", "acc_g", "acc_s", "h", "acc_c", "acc_n", "fid", "fid_ratio", "ssim")


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
    meta = {k: keys[0]["key"][k] for k in ("task", "concept", "attacks")} if keys else {}
    return meta, [k["row"] for k in keys]


def asr_table(folders: list[str]) -> None:
    """ASR columns (the first folder's attacks), then the certificate's when the bench ran with --certify."""
    metas = [rows(Path(f)) for f in folders]
    attacks = metas[0][0].get("attacks", []) if metas else []
    certified = any("mi_nats" in row["metrics"] for _, found in metas for row in found)
    columns = [f"asr_{a}" for a in attacks] + (["mi_nats", "base_mi_nats"] if certified else [])
    print("| task / concept | method | acc_e | " + " | ".join(c.removeprefix("asr_") for c in columns) + " |")
    print("|---" * (len(columns) + 3) + "|")
    for meta, found in metas:
        for row in found:
            cells = [cell(row["metrics"].get(c), True) for c in columns]
            print(f"| {meta['task']} / {meta['concept']} | {row['method']} | {cell(row['metrics'].get('acc_e'), False)}"
                  " | " + " | ".join(cells) + " |")


def certificate_table(folders: list[str]) -> None:
    """One row per certificate report.json found under the folders (`score certify` outputs)."""
    print("| task / concept | model | mi_nats | base_mi_nats | ratio | pinsker max accuracy | concept prompts | s |")
    print("|---" * 8 + "|")
    for folder in folders:
        for path in sorted(Path(folder).glob("**/report.json")):
            report = json.loads(path.read_text())
            if not str(report.get("format", "")).startswith("score-erasure/certificate"):
                continue
            ratio = "" if report["ratio"] is None else f"{report['ratio']:.2f}"
            print(f"| {report['task']} / {report['concept']} | {path.parent.parent.name} | "
                  f"{cell(report['mi_nats'], True)} | {cell(report['base_mi_nats'], True)} | {ratio} | "
                  f"{cell(report['pinsker_max_accuracy'], False)} | {len(report['concept_prompts'])} | "
                  f"{report['seconds']:.0f} |")


def main(folders: list[str]) -> None:
    if folders and folders[0] in ("--asr", "--cert"):
        (asr_table if folders[0] == "--asr" else certificate_table)(folders[1:])
        return
    columns = V2_COLUMNS if folders and folders[0] == "--v2" else COLUMNS
    folders = folders[1:] if columns is V2_COLUMNS else folders
    print("| task / concept | method | " + " | ".join(columns) + " | erase s | peak RSS MB |")
    print("|---" * (len(columns) + 4) + "|")
    for folder in folders:
        results, found = rows(Path(folder))
        for row in found:
            if row["status"] != "ok":
                print(f"| {results['task']} / {results['concept']} | {row['method']} | failed: {row['error']} |")
                continue
            cells = [cell(row["metrics"].get(k), k == "h") for k in columns]
            erase = "" if row.get("erase_seconds") is None or row["method"] == "none" else f"{row['erase_seconds']:.1f}"
            rss = "" if row.get("peak_rss_mb") is None or row["method"] == "none" else f"{row['peak_rss_mb']:.0f}"
            print(f"| {results['task']} / {results['concept']} | {row['method']} | " + " | ".join(cells)
                  + f" | {erase} | {rss} |")


if __name__ == "__main__":
    main(sys.argv[1:])
