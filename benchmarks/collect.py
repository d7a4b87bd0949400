"""Collect `score bench` folders into one markdown table (for docs/results.md).

    python benchmarks/collect.py runs/bench/object runs/bench/style ... > table.md
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


def main(folders: list[str]) -> None:
    print("| task / concept | method | " + " | ".join(COLUMNS) + " | erase s | peak RSS MB |")
    print("|---" * (len(COLUMNS) + 4) + "|")
    for folder in folders:
        results = json.loads((Path(folder) / "results.json").read_text())
        for row in results["rows"]:
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
