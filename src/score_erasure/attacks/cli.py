"""`score attack` and `score attacks`: parse, call the library, print."""

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from score_erasure.evaluation.cli import CacheDirOpt, CacheOpt, ConceptOpt, ProtocolOpt, TaskOpt


def register(app: typer.Typer) -> None:
    from score_erasure.cli import ModelOpt, console
    from score_erasure.io import read_overrides

    @app.command("attack")
    def attack_cmd(
        attack: Annotated[str, typer.Option(help="Attack name (see `score attacks`).")],
        concept: ConceptOpt,
        out: Annotated[Path, typer.Option(help="Folder for report.json, report.html, prompts/ and images/.")],
        model: ModelOpt = "embedded",
        base: Annotated[str | None, typer.Option(help="The model before erasure: target images, P4D's reference, "
                                               "the concept's prompt pairs (default: an erase folder's own "
                                               "base, an embedded model itself, else embedded).")] = None,
        task: TaskOpt = None,
        protocol: ProtocolOpt = None,
        config: Annotated[Path | None, typer.Option(help="TOML/JSON overriding the attack's config (budget).")]
        = None,
        resume: Annotated[bool, typer.Option("--resume/--restart", help="Skip prompts already attacked in --out "
                                                                         "with the same settings.")] = True,
        cache_dir: CacheDirOpt = None,
        cache: CacheOpt = True,
    ) -> None:
        """Attack a model on one task and concept: ASR (attacked prompts) beside the pre-attack rate.

        Writes the found prompts and embeddings (prompts/*.safetensors), image strips, report.json and report.html.
        """
        from score_erasure.attacks.run import run_attack
        from score_erasure.evaluation.report import fmt

        report = run_attack(model, attack, concept, out, task=task, base=base, protocol_path=protocol,
                            overrides=read_overrides(config), cache_dir=cache_dir, use_cache=cache, resume=resume)
        table = Table(title=f"{attack} on {report.task} / {concept}: {model}")
        for col in ("metric", "value", "95% interval"):
            table.add_column(col)
        for name, m in (("asr", report.asr), ("pre_asr", report.pre_asr)):
            table.add_row(name, fmt(m.value), f"[{fmt(m.ci_low)}, {fmt(m.ci_high)}]")
        console.print(table)
        console.print(f"{report.attack_seconds:.1f} s of attack ({report.resumed} of {len(report.rows)} prompts "
                      f"resumed, {report.seconds:.1f} s this run); report: {out / 'report.html'}")

    @app.command("attacks")
    def attacks_cmd() -> None:
        """List the attacks and their default configs (budgets)."""
        from score_erasure.attacks import ATTACKS

        table = Table(title="attacks")
        for col in ("name", "what", "defaults"):
            table.add_column(col)
        for a in ATTACKS.values():
            table.add_row(a.name, a.summary, json.dumps(a.config().model_dump()))
        console.print(table)
