"""The options and consoles every `score` command shares: a leaf of the cli package."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from score_erasure.errors import UserError


class _Console(Console):
    """Text lines are printed whole (soft-wrapped: a path is never split by an inserted line break, so a log can be
    grepped for it); tables and other renderables are laid out to the width."""

    def print(self, *objects, soft_wrap: bool | None = None, **kwargs) -> None:
        if soft_wrap is None:
            soft_wrap = all(isinstance(o, str) for o in objects)
        super().print(*objects, soft_wrap=soft_wrap, **kwargs)


def _console(stderr: bool = False) -> _Console:
    """On a terminal, its width. In a log (a file, a pipe) rich would assume 80 columns and cut table labels:
    there tables get 200."""
    stream = sys.stderr if stderr else sys.stdout
    return _Console(stderr=stderr, width=None if stream.isatty() else 200)


console = _console()
err = _console(stderr=True)

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
OverwriteOpt = Annotated[bool, typer.Option(help="Write into --out even though it holds another run (its files "
                                                "are replaced).")]
SeedOpt = Annotated[int, typer.Option(min=0, help="Seed (0 or more).")]
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
        table.add_row(key, Text(summary), Text("\n".join(f"{k} = {json.dumps(v, default=str)}"
                                                          for k, v in defaults.items())))
    console.print(table)


def read_overrides(path: Path | None) -> dict:
    """Config overrides from a TOML or JSON file (`--config`; nothing when no file is given)."""
    if path is None:
        return {}
    try:
        text = Path(path).read_text()
        return json.loads(text) if Path(path).suffix == ".json" else tomllib.loads(text)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read config '{path}': {exc}") from exc
