"""`score certify`: parse, call the library, print."""

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from score_erasure.cli.options import (
    BaseOpt,
    CacheDirOpt,
    CacheOpt,
    ConceptOpt,
    ModelOpt,
    OverwriteOpt,
    ProtocolOpt,
    TaskOpt,
    console,
)


def register(app: typer.Typer) -> None:
    @app.command("certify")
    def certify_cmd(
        concept: ConceptOpt,
        out: Annotated[Path, typer.Option(help="Folder for report.json, report.html and image strips.")],
        attacks: Annotated[list[Path] | None, typer.Option("--attacks", help="A `score attack` output folder whose "
                                                           "found prompts join the concept prompts; repeat.")]
        = None,
        model: ModelOpt = "embedded",
        base: BaseOpt = None,
        task: TaskOpt = None,
        protocol: ProtocolOpt = None,
        n: Annotated[int, typer.Option("-n", help="Images per class (concept, neutral) and model.")] = 256,
        folds: Annotated[int, typer.Option(help="Cross-fitting folds of the probes.")] = 5,
        neutral: Annotated[str, typer.Option(help="'anchors' (the concept's prompts without it) or 'protocol' "
                                                  "(the protocol's neutral prompts).")] = "anchors",
        seed: Annotated[int, typer.Option(min=0, help="First image seed.")] = 0,
        cache_dir: CacheDirOpt = None,
        cache: CacheOpt = True,
        overwrite: OverwriteOpt = False,
    ) -> None:
        """Estimate how much of a concept is left: mutual information between concept and image, in nats.

        Fresh probes (logistic regression, small MLP) on the judge's features of N concept and N neutral images;
        a lower bound on leakage, read as an upper bound only if the probes are near-optimal.
        """
        from score_erasure.jobs.certify import certify
        from score_erasure.reporting import fmt

        report = certify(model, concept, out, task=task, base=base, protocol_path=protocol, attack_folders=attacks,
                         overrides={"n": n, "folds": folds, "neutral": neutral, "seed": seed}, overwrite=overwrite,
                         cache_dir=cache_dir, use_cache=cache)
        table = Table(title=f"leakage of {report.task} / {concept}: {model} vs base {report.base}")
        for col in ("estimate", "model", "95% interval", "base", "95% interval"):
            table.add_column(col)
        for name in ("mi_nats", "fano_nats", "pinsker_max_accuracy"):
            m, b = getattr(report, name), getattr(report, f"base_{name}")
            table.add_row(name, fmt(m.value), f"[{fmt(m.ci_low)}, {fmt(m.ci_high)}]", fmt(b.value),
                          f"[{fmt(b.ci_low)}, {fmt(b.ci_high)}]")
        console.print(table)
        ratio = "undefined (no leakage measured in the base)" if report.ratio is None else fmt(report.ratio)
        console.print(f"ratio model / base: {ratio}\n{report.assumption}\n"
                      f"{report.seconds:.1f} s; report: {out / 'report.html'}")
