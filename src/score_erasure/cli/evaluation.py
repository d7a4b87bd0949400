"""`score evaluate`, `score bench`, `score report`, `score protocol` and `score protocol-build`: parse, call the
library, print."""


import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from score_erasure.cli.options import (
    BaseOpt,
    CacheDirOpt,
    CacheOpt,
    ClipOpt,
    ConceptOpt,
    FidOpt,
    ModelOpt,
    OverwriteOpt,
    ProtocolOpt,
    TaskOpt,
    console,
    read_overrides,
)
from score_erasure.errors import UserError

if TYPE_CHECKING:
    from score_erasure.evaluation.protocol import Protocol

def _metrics_table(title: str, metrics: dict, base_metrics: dict | None = None) -> Table:
    from score_erasure.reporting import BETTER, UNITS, fmt

    table = Table(title=title)
    for col in ("metric", "value", "95% interval", "base", "better"):
        table.add_column(col, justify="right" if col != "metric" else "left")
    for name, m in metrics.items():
        b = (base_metrics or {}).get(name)
        label = f"{name} ({UNITS[name]})" if name in UNITS else name
        table.add_row(label, fmt(m.value), f"[{fmt(m.ci_low)}, {fmt(m.ci_high)}]", fmt(b.value) if b else "",
                      BETTER.get(name, ""))
    return table


def print_evaluation(console, report, model: str, base: str, out: Path) -> None:
    """The metrics table of one evaluation, its notes, time and report path."""
    console.print(_metrics_table(f"{report.task} / {report.concept}: {model} vs base {base}", report.metrics,
                                 report.base_metrics))
    for note in report.notes:
        console.print(f"note: {note}")
    console.print(f"{report.seconds:.1f} s ({report.cache.get('generated', 0)} images generated, "
                  f"{report.cache.get('hits', 0)} from cache); report: {out / 'report.html'}")


def parse_variant(text: str) -> tuple[str, tuple[str, dict]]:
    """'no-adversary=score:no-adversary.toml' -> ('no-adversary', ('score', {...})); the config is optional."""
    label, sep, rest = text.partition("=")
    method, _, path = rest.partition(":")
    if not sep or not label.strip() or not method.strip():
        raise UserError(f"--variant '{text}': expected LABEL=METHOD:CONFIG, e.g. no-adversary=score:no-adv.toml")
    return label.strip(), (method.strip(), read_overrides(Path(path.strip()) if path.strip() else None))


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate_cmd(
        concept: ConceptOpt,
        out: Annotated[Path, typer.Option(help="Folder for report.json, report.html and image strips.")],
        model: ModelOpt = "embedded",
        base: BaseOpt = None,
        task: TaskOpt = None,
        protocol: ProtocolOpt = None,
        cache_dir: CacheDirOpt = None,
        cache: CacheOpt = True,
        fid_features: FidOpt = None,
        clip_model: ClipOpt = None,
        overwrite: OverwriteOpt = False,
    ) -> None:
        """Evaluate a model on one task and concept against a base model (metrics with 95% intervals).

        Writes report.json and report.html: acc_e, acc_g, acc_s, h, fid, kid, ssim, psnr and the images.
        """
        from score_erasure.jobs.evaluate import evaluate

        report = evaluate(model, concept, out, task=task, base=base, protocol_path=protocol, cache_dir=cache_dir,
                          use_cache=cache, fid_features=fid_features, clip_model=clip_model, overwrite=overwrite)
        print_evaluation(console, report, model, report.base, out)

    @app.command("bench")
    def bench_cmd(
        concept: ConceptOpt,
        out: Annotated[Path, typer.Option(help="Folder for results.md, results.json, results.png, reports.")],
        methods: Annotated[str, typer.Option(help="Comma-separated method names ('none' = the unmodified model).")]
        = "none",
        model: ModelOpt = "embedded",
        task: TaskOpt = None,
        protocol: ProtocolOpt = None,
        attacks: Annotated[str, typer.Option(help="Comma-separated attacks (see `score attacks`): one ASR column "
                                                  "each.")] = "",
        cache_dir: CacheDirOpt = None,
        cache: CacheOpt = True,
        fid_features: FidOpt = None,
        clip_model: ClipOpt = None,
        variant: Annotated[list[str] | None, typer.Option(help="LABEL=METHOD:CONFIG (TOML/JSON): one more row, the "
                                                          "method with its config overridden; repeat.")] = None,
        resume: Annotated[bool, typer.Option(help="Keep the rows that an earlier run into --out finished with the "
                                                  "same base, protocol, attacks and versions.")] = False,
        certify: Annotated[bool, typer.Option(help="Add each row's leakage certificate (mi_nats, base_mi_nats), "
                                                   "the attacks' finds among its concept prompts.")] = False,
        overwrite: OverwriteOpt = False,
    ) -> None:
        """Erase the concept with each method and evaluate all of them against the same base, in one run."""
        from score_erasure.jobs.bench import bench, table_columns

        names = [m.strip() for m in methods.split(",") if m.strip()]
        attack_names = [a.strip() for a in attacks.split(",") if a.strip()]
        command = shlex.join(["score", *sys.argv[1:]])
        rows = bench(model, concept, names, out, task=task, protocol_path=protocol, cache_dir=cache_dir,
                     use_cache=cache, fid_features=fid_features, clip_model=clip_model, command=command,
                     attacks=attack_names, variants=dict(parse_variant(v) for v in variant or []), resume=resume,
                     certify={} if certify else None, overwrite=overwrite)
        columns = table_columns(rows, attack_names, certify)
        table = Table(title=f"bench: {concept} on {model}")
        for col in ("method", *columns, "erase s", "peak RSS MB", "status"):
            table.add_column(col)
        for row in rows:
            values = [f"{row.metrics[k]['value']:.3g}" if k in row.metrics else "" for k in columns]
            erase = "" if row.erase_seconds is None else f"{row.erase_seconds:.1f}"
            rss = "" if row.peak_rss_mb is None else f"{row.peak_rss_mb:.0f}"
            table.add_row(row.method, *values, erase, rss, "ok" if row.status == "ok" else f"[red]{row.error}[/]")
        console.print(table)
        console.print(f"results: {out / 'results.md'}")

    @app.command("leaderboard")
    def leaderboard_cmd(
        out: Annotated[Path, typer.Option(help="Folder: one bench folder per task, many/, leaderboard.md, "
                                               ".json and .html. A rerun keeps every finished row.")],
        methods: Annotated[str | None, typer.Option(help="Comma-separated methods (default: every method of the "
                                                         "registry; `none`, the model itself, is always a row).")]
        = None,
        model: ModelOpt = "embedded",
        tasks: Annotated[str, typer.Option(help="Comma-separated TASK/CONCEPT pairs.")]
        = "object/star,style/striped,character/Zorblat,unsafe/fire",
        attacks: Annotated[str, typer.Option(help="Comma-separated attacks: an ASR column each, and h_rob.")]
        = "unlearndiff,inversion,inversion-word",
        certify: Annotated[bool, typer.Option(help="Each row's leakage certificate (mi_nats).")] = True,
        sets: Annotated[str | None, typer.Option(help="Sizes of the many-concepts curve (default: every size of "
                                                      "--concept-sets; '' to skip it).")] = None,
        concept_sets: Annotated[str, typer.Option(help="The many-concepts protocol: world-many (shapes, "
                                                       "characters, styles, colours: 1, 2, 4, 8, 12), "
                                                       "world-characters (1 to 4 characters), or a JSON "
                                                       "file.")] = "world-many",
        docs: Annotated[Path | None, typer.Option(help="Also write the tables into this markdown file, between "
                                                       "its leaderboard markers (docs/results.md).")] = None,
        cache_dir: CacheDirOpt = None,
        cache: CacheOpt = True,
        overwrite: Annotated[bool, typer.Option(help="Recompute every row instead of keeping the finished "
                                                     "ones.")] = False,
        tables_only: Annotated[bool, typer.Option(help="Run nothing: the tables of the rows saved in --out so far "
                                                       "(a run still going, or stopped), in OUT/partial.")] = False,
        jobs: Annotated[int, typer.Option(min=1, help="Run the tasks in this many processes at once, each at "
                                                      "--threads threads and on cores of its own when there are "
                                                      "enough (`score --threads 1 leaderboard --jobs 2` on 2 "
                                                      "cores); the rows are those of one process.")] = 1,
    ) -> None:
        """Benchmark v2: every method over every task (acc_c, acc_n, h_rob, the fidelity floor, ASR, leakage) and
        the many-concepts curve, resumable row by row; writes the tables and an HTML page with plots."""
        from score_erasure.jobs.leaderboard import leaderboard
        from score_erasure.methods import METHODS

        # a method that does not run on the model's family is a failed row that says so
        names = [m.strip() for m in methods.split(",") if m.strip()] if methods is not None else list(METHODS)
        suite = []
        for pair in (t.strip() for t in tasks.split(",") if t.strip()):
            task, _, concept = pair.partition("/")
            if not concept:
                raise UserError(f"--tasks '{pair}': expected TASK/CONCEPT, e.g. object/star")
            suite.append((task, concept))
        from score_erasure.evaluation.protocol import packaged_sets_path

        sizes = None if sets is None else tuple(int(k) for k in sets.split(",") if k.strip())
        record = leaderboard(model, names, out, tuple(suite), tuple(a.strip() for a in attacks.split(",") if a.strip()),
                             certify={} if certify else None, sizes=sizes, cache_dir=cache_dir, use_cache=cache,
                             overwrite=overwrite, docs=docs, command=shlex.join(["score", *sys.argv[1:]]),
                             tables_only=tables_only, sets_path=packaged_sets_path(concept_sets), jobs=jobs)
        written = out / "partial" if tables_only else out  # where `leaderboard` wrote them
        console.print(f"{record['seconds']:.0f} s; tables: {written / 'leaderboard.md'}; "
                      f"page: {written / 'leaderboard.html'}")

    @app.command("report")
    def report_cmd(folder: Annotated[Path, typer.Argument(metavar="FOLDER", help="A folder written by `score "
                                                          "evaluate`, `score attack` or `score certify`.")]) -> None:
        """Re-render report.html from report.json (no sampling), for any kind of report."""
        from score_erasure.jobs.report import rerender

        console.print(f"wrote {rerender(folder)}")

    @app.command("protocol")
    def protocol_cmd(
        task: Annotated[str, typer.Argument(metavar="TASK", help="object, style, character or unsafe (version 2; "
                                                                 "TASK@1 for version 1).")],
        show: Annotated[bool, typer.Option(help="Print the whole JSON (to copy and edit for --protocol).")] = False,
    ) -> None:
        """Show a packaged protocol: its file, hash, concepts and sizes."""
        from score_erasure.evaluation.protocol import load_protocol, packaged_path

        path = packaged_path(task)
        if show:
            print(path.read_text(), end="")
            return
        console.print(protocol_summary(load_protocol(path), path))

    @app.command("protocol-build")
    def protocol_build_cmd(
        prompt_set: Annotated[str, typer.Argument(metavar="SET", help="i2p, unlearndiff-nudity, mace-cifar10, "
                                                                       "mace-celebrity or mace-artist.")],
        source: Annotated[str, typer.Option(help="The set's file, a folder holding it, or a hub dataset id "
                                                 "(OWNER/NAME or OWNER/NAME:FILE).")],
        out: Annotated[Path, typer.Option(help="The protocol JSON to write (then pass it as --protocol).")],
        limit: Annotated[int | None, typer.Option(min=1, help="A small protocol for a quick run: the first N "
                                                              "concepts and N prompts per group (nudity sets) or "
                                                              "N names/classes a side (MACE sets).")] = None,
        seeds: Annotated[str | None, typer.Option(help="Comma-separated seeds, e.g. 0,1,2,3 (default: the set's "
                                                       "shared seeds, else 0,1; 0-7 for mace-cifar10).")] = None,
        min_nudity: Annotated[float | None, typer.Option(help="i2p: only target prompts with nudity_percentage "
                                                              ">= this (default 0).")] = None,
        clip_model: Annotated[str | None, typer.Option(help="MACE sets: the CLIP judge's model (default "
                                                            "openai/clip-vit-base-patch32).")] = None,
        neutral: Annotated[Path | None, typer.Option(help="Neutral prompts: a text file (one a line) or a CSV "
                                                          "with a prompt column (default: 16 built in).")] = None,
    ) -> None:
        """Build a protocol file from a standard prompt set (I2P, UnlearnDiffAtk, MACE) for --protocol."""
        from score_erasure.evaluation.external import build_protocol, parse_seeds, read_prompt_list, write_protocol

        options = {"seeds": parse_seeds(seeds) if seeds else None, "limit": limit, "min_nudity": min_nudity,
                   "clip_model": clip_model, "neutral": read_prompt_list(neutral) if neutral else None}
        p = build_protocol(prompt_set, source, **{k: v for k, v in options.items() if v is not None})
        write_protocol(p, out)
        console.print(protocol_summary(p, out))


def protocol_summary(p: "Protocol", path: Path) -> str:
    """Name, file, hash, concepts (the first ten), the first concept's group sizes, sampling and judge."""
    first = p.prompts(next(iter(p.concepts)))
    sizes = ", ".join(f"{g} {len(v)}" for g, v in first.items())
    names = ", ".join(list(p.concepts)[:10]) + (f", ... ({len(p.concepts)} in all)" if len(p.concepts) > 10 else "")
    return (f"{p.name} v{p.version}  {path}\nhash {p.hash}\nconcepts: {names}\n"
            f"prompts per concept: {sizes}; {p.images_per_prompt} images per prompt; "
            f"{p.sampling.sampler} {p.sampling.steps} steps, guidance {p.sampling.guidance}; judge {p.judge.name}")
