"""Collect `score bench` folders into one markdown table (for docs/results.md).

    python benchmarks/collect.py runs/bench/object runs/bench/style ... > table.md
    python benchmarks/collect.py --v2 runs/bench/object ... > table.md   # + acc_c, acc_n, fid as a ratio to its floor
    python benchmarks/collect.py --asr runs/asr/object runs/asr/unsafe > asr.md   # ASR columns, with intervals
    python benchmarks/collect.py --asr runs/asr3/object docs/data/leaderboard/object   # one task's columns joined
    python benchmarks/collect.py --cert runs/cert/object > cert.md   # every METHOD/certify/report.json below

A bench still running (or stopped, to be resumed) has no results.json yet: its finished rows are read from
`<method>/row.json`, in the registry's order (`none` first): file times say nothing in a fresh clone.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from score_erasure.methods import METHODS

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


def registry_order(method: str) -> tuple[int, str]:
    """`none` first, then the methods in the registry's order, then any other label (a variant) by name."""
    order = ["none", *METHODS]
    return (order.index(method), "") if method in order else (len(order), method)


def rows(folder: Path) -> tuple[dict, list[dict]]:
    """(task/concept meta, rows) of a finished bench, or of the rows a running bench has finished; a finished
    bench's folder may also hold rows of a later bench (method/row.json) on the same protocol, appended."""
    saved = sorted(folder.glob("*/row.json"), key=lambda f: registry_order(f.parent.name))
    keys = [json.loads(f.read_text()) for f in saved]
    fields = ("task", "concept", "attacks", "protocol_hash", "base_hash")
    identity = [k for k in fields if k != "attacks"]  # attacks may differ between benches of one setting
    done = folder / "results.json"
    if done.is_file():
        results = json.loads(done.read_text())
        listed = {row["method"] for row in results["rows"]}
        for key in keys:
            if any(key["key"].get(k) != results.get(k) for k in identity):
                raise SystemExit(f"{folder}: a saved row of another task, protocol or base model than results.json")
        return results, results["rows"] + [k["row"] for k in keys if k["row"]["method"] not in listed]
    meta = {k: keys[0]["key"].get(k) for k in fields} if keys else {}
    return meta, [k["row"] for k in keys]


def asr_table(folders: list[str]) -> None:
    """ASR columns (every attack of the folders, in order of appearance), then the certificate's when a bench
    ran with --certify. Folders of the same task and protocol join column by column: the rows are the methods of
    the task's first folder, and each takes a metric from the first folder that has it (say, p4d from one bench
    and unlearndiff from a leaderboard's rows); folders of one task on different protocols or base models are
    refused."""
    merged: dict[tuple[str, str], dict] = {}
    attacks: list[str] = []
    settings: dict[str, tuple] = {}
    for folder in folders:
        meta, found = rows(Path(folder))
        task = f"{meta['task']} / {meta['concept']}"
        attacks += [a for a in meta.get("attacks", []) if a not in attacks]
        setting = (meta.get("protocol_hash"), meta.get("base_hash"))
        first = task not in settings
        if settings.setdefault(task, setting) != setting:
            raise SystemExit(f"{folder}: another protocol or base model than an earlier folder of {task}")
        for row in found:
            if not first and (task, row["method"]) not in merged:
                continue
            metrics = merged.setdefault((task, row["method"]), {})
            metrics.update({k: v for k, v in row["metrics"].items() if k not in metrics})
    certified = any("mi_nats" in metrics for metrics in merged.values())
    columns = [f"asr_{a}" for a in attacks] + (["mi_nats", "base_mi_nats"] if certified else [])
    print("| task / concept | method | acc_e | " + " | ".join(c.removeprefix("asr_") for c in columns) + " |")
    print("|---" * (len(columns) + 3) + "|")
    for (task, method), metrics in merged.items():
        cells = [cell(metrics.get(c), True) for c in columns]
        print(f"| {task} | {method} | {cell(metrics.get('acc_e'), False)} | " + " | ".join(cells) + " |")


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
