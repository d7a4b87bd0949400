"""The options and consoles every `score` command shares: a leaf of the cli package."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from score_erasure.errors import UserError

console = Console()
err = Console(stderr=True)

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="'embedded', a diffusers directory, or a hub id.")]
BaseOpt = Annotated[str | None, typer.Option(help="The model before erasure, the reference of every comparison "
                                                  "(default: an erase folder's own base, an embedded model itself, "
                                                  "else embedded).")]
TaskOpt = Annotated[str | None, typer.Option(help="object, style, character or unsafe (the packaged protocols; "
                                                  "default: the one that has the concept).")]
ConceptOpt = Annotated[str, typer.Option("--concept", "-c",
                                         help="Canonical concept name, e.g. star, striped, Zorblat, fire.")]
ProtocolOpt = Annotated[Path | None, typer.Option(help="A protocol JSON file instead of the packaged one.")]
CacheDirOpt = Annotated[Path | None, typer.Option(help="Image cache folder (default $SCORE_CACHE or "
                                                       "~/.cache/score-erasure/images).")]
CacheOpt = Annotated[bool, typer.Option("--cache/--no-cache", help="Reuse and store generated images.")]
FidOpt = Annotated[Path | None, typer.Option(help="TorchScript feature extractor for FID/KID (e.g. fid-helper's "
                                                  "InceptionV3) instead of the judge's features.")]
ClipOpt = Annotated[str | None, typer.Option(help="CLIP model (local dir or cached hub id): adds clip_score.")]
NameOpt = Annotated[str | None, typer.Argument(help="Show only this entry.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def print_registry(title: str, entries: dict[str, tuple[str, dict]], name: str | None, as_json: bool) -> None:
    """A registry listing (`score methods`, `score attacks`): each entry's summary and its whole default config,
    one key a line, or as JSON; `name` picks one entry."""
    if name is not None:
        if name not in entries:
            raise UserError(f"unknown name '{name}'; choose one of: {', '.join(entries)}")
        entries = {name: entries[name]}
    if as_json:
        print(json.dumps({k: {"summary": summary, "defaults": defaults} for k, (summary, defaults) in entries.items()},
                         indent=2, default=str))
        return
    table = Table(title=title, show_lines=True)
    for column in ("name", "what", "defaults"):
        table.add_column(column, overflow="fold")
    for key, (summary, defaults) in entries.items():
        table.add_row(key, summary, "\n".join(f"{k} = {json.dumps(v, default=str)}" for k, v in defaults.items()))
    console.print(table)
