"""`score attack` and `score attacks`: parse, call the library, print."""

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from score_erasure.cli.options import (
    BaseOpt,
    CacheDirOpt,
    CacheOpt,
    ConceptOpt,
    JsonOpt,
    ModelOpt,
    NameOpt,
    OverwriteOpt,
    ProtocolOpt,
    TaskOpt,
    console,
    print_registry,
    read_overrides,
)


def register(app: typer.Typer) -> None:
    @app.command("attack")
    def attack_cmd(
        attack: Annotated[str, typer.Option(help="Attack name (see `score attacks`).")],
        concept: ConceptOpt,
        out: Annotated[Path, typer.Option(help="Folder for report.json, report.html, prompts/ and images/.")],
        config: Annotated[Path | None, typer.Option(help="TOML/JSON overriding the attack's config (budget).")]
        = None,
        model: ModelOpt = "embedded",
        base: BaseOpt = None,
        task: TaskOpt = None,
        protocol: ProtocolOpt = None,
        resume: Annotated[bool | None, typer.Option("--resume/--restart", help="Keep (or redo) the prompts that an "
                                                    "earlier run into --out attacked with the same settings (kept "
                                                    "by default unless that run finished).")] = None,
        cache_dir: CacheDirOpt = None,
        cache: CacheOpt = True,
        overwrite: OverwriteOpt = False,
    ) -> None:
        """Attack a model on one task and concept: ASR (attacked prompts) beside the pre-attack rate.

        Writes the found prompts and embeddings (prompts/*.safetensors), image strips, report.json and report.html.
        """
        from score_erasure.jobs.attack import run_attack
        from score_erasure.reporting import fmt

        report = run_attack(model, attack, concept, out, task=task, base=base, protocol_path=protocol,
                            overrides=read_overrides(config), cache_dir=cache_dir, use_cache=cache, resume=resume,
                            overwrite=overwrite)
        table = Table(title=f"{attack} on {report.task} / {concept}: {model}")
        for col in ("metric", "value", "95% interval"):
            table.add_column(col)
        for name, m in (("asr", report.asr), ("pre_asr", report.pre_asr)):
            table.add_row(name, fmt(m.value), f"[{fmt(m.ci_low)}, {fmt(m.ci_high)}]")
        console.print(table)
        console.print(f"{report.attack_seconds:.1f} s of attack ({report.resumed} of {len(report.rows)} prompts "
                      f"resumed, {report.seconds:.1f} s this run); report: {out / 'report.html'}")

    @app.command("attacks")
    def attacks_cmd(name: NameOpt = None, as_json: JsonOpt = False) -> None:
        """List the attacks and their whole default configs (budgets)."""
        from score_erasure.attacks import ATTACKS

        print_registry("attacks", {a.name: (a.summary, a.config().model_dump(mode="json")) for a in ATTACKS.values()},
                       name, as_json)
