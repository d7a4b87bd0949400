"""`score leaderboard`: every method over benchmark v2, in one command, resumable row by row.

The suite is one `score bench` per task (object/star, style/striped, character/Zorblat, unsafe/fire) on the
format-2 protocols (acc_c, acc_n, the fidelity floor), with the attacks (h_rob) and the certificate (mi_nats),
then the many-concepts curve (the sets of protocols/sets/world-many.json, each erased in one run). Every bench
row and every curve point is saved when done and kept by a rerun whose settings match, so a killed run loses at
most the row it was in. leaderboard.json, leaderboard.md (the section docs/results.md includes) and
leaderboard.html are written from the saved rows alone.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from score_erasure.errors import UserError
from score_erasure.evaluation.cache import ImageCache, default_cache_dir
from score_erasure.evaluation.evaluate import Scorers, score_set, set_prompts
from score_erasure.evaluation.judges import load_judge
from score_erasure.evaluation.protocol import load_sets, resolve_protocol
from score_erasure.io import atomic_write_json, atomic_write_text, output_folder, release_folder
from score_erasure.jobs.bench import BenchRow, ErasureRequest, bench, eraser, method_config
from score_erasure.jobs.leaderboard_page import leaderboard_html, leaderboard_markdown
from score_erasure.models import resolve_model
from score_erasure.options import OPTIONS, set_run_options
from score_erasure.progress import log
from score_erasure.provenance import compute, provenance, versions

SUITE = (("object", "star"), ("style", "striped"), ("character", "Zorblat"), ("unsafe", "fire"))
ATTACKS = ("unlearndiff", "inversion", "inversion-word")
DOCS_START, DOCS_END = "<!-- leaderboard:start -->", "<!-- leaderboard:end -->"


def docs_markers(model: str) -> tuple[str, str]:
    """The markers around a model's tables in the docs: named ones for the other shipped models
    (`<!-- leaderboard:embedded-ar:start -->`), so that docs/results.md holds a section per embedded model; the
    unnamed pair for `embedded` and for a user's own model."""
    if model in ("embedded-flux", "embedded-ar", "embedded-var"):
        return f"<!-- leaderboard:{model}:start -->", f"<!-- leaderboard:{model}:end -->"
    return DOCS_START, DOCS_END


@dataclass
class CurvePoint:
    """One method's erasure of one concept set (k concepts in one run)."""

    method: str
    k: int
    concepts: list[str]
    status: str  # "ok" or "failed"
    error: str | None = None
    erase_seconds: float | None = None
    seconds: float | None = None
    metrics: dict[str, dict] = field(default_factory=dict)


def _saved(path: Path, key: dict, kind):
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return kind(**data["row"]) if data.get("key") == key else None


def _as_saved(path: Path, kind):
    """A saved row as it is, its settings unchecked (`tables_only`)."""
    return kind(**json.loads(path.read_text())["row"]) if path.is_file() else None


def concept_sets(model: str, methods: list[str], out: Path, sizes: tuple[int, ...] | None = None,
                 cache: ImageCache | None = None, resume: bool = True, sets_path: Path | None = None
                 ) -> list[CurvePoint]:
    """The many-concepts curve of each method: each set erased in one run and scored (acc_e on the erased
    concepts, acc_s and fid on everything else). A point saved in `out/<method>/k<k>.json` is kept when its
    settings match; a method that fails on a set (or cannot erase several concepts) is a failed point."""
    sets = load_sets(sets_path)
    sizes = sizes or tuple(int(k) for k in sets.sets)
    if missing := [k for k in sizes if str(k) not in sets.sets]:
        raise UserError(f"no concept set of size {missing[0]}; choose among {', '.join(sets.sets)}")
    cache = cache or ImageCache(None)
    base_model = resolve_model(model)
    judge = load_judge(sets.judge)
    scorers = Scorers(judge, judge.features if judge.has_features else None)
    base_pipe, base_images, points = None, {}, []
    for method in methods:
        erase = eraser(method)
        for k in sizes:
            concept_set, path = sets.sets[str(k)], Path(out) / method / f"k{k}.json"
            key = {"method": method, "k": k, "sets_hash": sets.hash, "base_hash": base_model.hash,
                   "config": method_config(method, None), "versions": versions(), "compute": compute()}
            saved = _saved(path, key, CurvePoint) if resume else None
            if saved is not None:
                log(f"concept sets: {method}, k={k} (done in an earlier run: kept)")
                points.append(saved)
                continue
            log(f"concept sets: {method}, k={k} ({', '.join(concept_set.concepts)})")
            base_pipe = base_pipe or base_model.load()
            prompts, seeds = set_prompts(concept_set), list(sets.seeds)
            if k not in base_images:
                base_images[k] = cache.images(base_pipe, base_model.hash, sets.sampling, prompts, seeds, False)
            start = time.time()
            try:
                request = ErasureRequest("many", ",".join(concept_set.concepts), model,
                                         base_model.spec(list(concept_set.concepts)))
                erased = erase(base_model.load(), request)
                erase_seconds = time.time() - start
                images = ImageCache(None).images(erased, f"erased:{method}:{k}", sets.sampling, prompts, seeds, False)
                scored = score_set(images, base_images[k], concept_set, scorers, sets.bootstrap)
                point = CurvePoint(method, k, list(concept_set.concepts), "ok", erase_seconds=erase_seconds,
                                   seconds=time.time() - start, metrics={n: m.as_dict() for n, m in scored.items()})
            except Exception as exc:  # a failed set is a point of the curve, not the end of the run
                first = str(exc).splitlines()[0] if str(exc) else ""
                point = CurvePoint(method, k, list(concept_set.concepts), "failed",
                                   error=f"{type(exc).__name__}: {first}"[:300])
                log(f"{method}, k={k} failed: {point.error}")
            atomic_write_json(path, {"key": key, "row": asdict(point)})
            points.append(point)
    return points


def leaderboard(model: str, methods: list[str], out: Path, suite: tuple[tuple[str, str], ...] = SUITE,
                attacks: tuple[str, ...] = ATTACKS, certify: dict | None = None, sizes: tuple[int, ...] | None = None,
                cache_dir: Path | None = None, use_cache: bool = True, overwrite: bool = False,
                docs: Path | None = None, command: str = "", protocol_paths: dict[str, Path] | None = None,
                sets_path: Path | None = None, tables_only: bool = False, jobs: int = 1) -> dict:
    """Run (or resume) the whole v2 suite for `methods` on `model`; writes leaderboard.{json,md,html} in `out`
    and, with `docs`, replaces that file's section between DOCS_START and DOCS_END with the tables. A rerun into
    `out` keeps every saved row whose settings match; `overwrite` recomputes them all. `sizes=()` skips the
    many-concepts curve. `certify`: CertifyConfig overrides ({} for the defaults; None: no certificate);
    `protocol_paths` (task -> file) and `sets_path` replace packaged protocols (small ones for tests).
    `tables_only` runs nothing: the tables of the rows saved in `out` so far (a run still going, or stopped),
    written to out/partial. `jobs` > 1 runs the tasks in that many processes at once (`_tasks_in_processes`);
    the rows are the ones a single process writes."""
    if "none" in methods:
        raise UserError("'none' (the unmodified model) is always the first row of each task; leave it out")
    start = time.time()
    # tables only: the run may still hold `out`; the tables go to out/partial
    written = output_folder(Path(out) / "partial" if tables_only else out, "leaderboard", resume=True,
                            overwrite=overwrite or tables_only)
    out = Path(out)
    cache = ImageCache((cache_dir or default_cache_dir()) if use_cache else None)
    run = TaskRun(model, tuple(methods), out, tuple(attacks), certify, cache_dir, use_cache, overwrite, command,
                  protocol_paths)
    if tables_only:
        tasks = {f"{task}/{concept}": [r for m in ("none", *methods)
                                       if (r := _as_saved(out / task / m / "row.json", BenchRow))]
                 for task, concept in suite}
    elif jobs > 1 and len(suite) > 1:
        tasks = _tasks_in_processes(suite, jobs, run)
    else:
        tasks = _run_tasks(suite, run)
    if tables_only:
        curve_sizes = [int(k) for k in load_sets(sets_path).sets] if sizes is None else sizes
        curves = [p for m in methods for k in curve_sizes
                  if (p := _as_saved(out / "many" / m / f"k{k}.json", CurvePoint))]
    else:
        curves = (concept_sets(model, methods, out / "many", sizes, cache, resume=not overwrite,
                               sets_path=sets_path) if sizes != () else [])
    record = {"command": command, "model": model, "methods": methods, "suite": [list(s) for s in suite],
              "tables_only": tables_only,
              "attacks": list(attacks), "certify": certify is not None,
              "protocols": {f"{t}/{c}": resolve_protocol(t, (protocol_paths or {}).get(t)).hash for t, c in suite},
              "sets_hash": load_sets(sets_path).hash if curves else None, "seconds": time.time() - start,
              "tasks": {name: [asdict(r) for r in rows] for name, rows in tasks.items()},
              "curves": [asdict(p) for p in curves], **provenance()}
    markdown = leaderboard_markdown(record)
    atomic_write_json(written / "leaderboard.json", record)
    atomic_write_text(written / "leaderboard.md", markdown)
    atomic_write_text(written / "leaderboard.html", leaderboard_html(record))
    if docs is not None:
        include_in_docs(Path(docs), markdown, *docs_markers(model))
    release_folder(written)
    return record


@dataclass(frozen=True)
class TaskRun:
    """The leaderboard's settings that every task's bench shares (picklable: spawned processes get a copy)."""
    model: str
    methods: tuple[str, ...]
    out: Path
    attacks: tuple[str, ...]
    certify: dict | None
    cache_dir: Path | None
    use_cache: bool
    overwrite: bool
    command: str
    protocol_paths: dict[str, Path] | None


def _run_tasks(suite: tuple[tuple[str, str], ...], run: TaskRun) -> dict[str, list[BenchRow]]:
    """One bench per task of `suite`, in this process."""
    rows = {}
    for task, concept in suite:
        log(f"leaderboard: {task} / {concept}")
        rows[f"{task}/{concept}"] = bench(run.model, concept, ["none", *run.methods], run.out / task, task=task,
                                          protocol_path=(run.protocol_paths or {}).get(task),
                                          cache_dir=run.cache_dir, use_cache=run.use_cache, command=run.command,
                                          attacks=list(run.attacks), resume=not run.overwrite,
                                          overwrite=run.overwrite, certify=run.certify)
    return rows


def _worker(share: tuple[tuple[str, str], ...], index: int, processes: int, options: dict,
            run: TaskRun) -> dict[str, list[BenchRow]]:
    """Process `index` of `processes`: its share of the tasks, with the parent's run options and cores of its
    own when the machine has enough for every process (`taskset`'s one job per core, done by the command)."""
    exit_with_parent()
    os.environ["SCORE_LOG_TAG"] = ",".join(f"{task}/{concept}" for task, concept in share)
    threads = options["threads"]
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cores) >= processes * threads:
        os.sched_setaffinity(0, cores[index * threads:(index + 1) * threads])
    set_run_options(**options)
    return _run_tasks(share, run)


def exit_with_parent(poll_seconds: float = 1.0) -> None:
    """End this process once its parent is gone: a leaderboard stopped with `kill` (not Ctrl-C, which reaches the
    whole process group) must not leave its workers drawing on the cores. Rows are written atomically, so a worker
    cut off mid-row leaves that row to the next run. The parent's pid is the one multiprocessing recorded at the
    spawn, so a parent that died before this call still counts."""
    parent = multiprocessing.parent_process()
    if parent is None:  # not a multiprocessing child
        return

    def watch() -> None:
        while os.getppid() == parent.pid:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _tasks_in_processes(suite: tuple[tuple[str, str], ...], jobs: int, run: TaskRun) -> dict[str, list[BenchRow]]:
    """The tasks dealt round-robin to `jobs` fresh processes, each at this process's thread count (so a row's
    numbers are those of a serial run at that count). Tasks write separate folders (out/<task>): no two
    processes write one file, and a killed run resumes row by row as a serial one does."""
    options = {**asdict(OPTIONS), "threads": OPTIONS.threads or torch.get_num_threads()}
    shares = [suite[i::jobs] for i in range(min(jobs, len(suite)))]
    log(f"leaderboard: {len(suite)} tasks in {len(shares)} processes, {options['threads']} thread(s) each")
    with ProcessPoolExecutor(len(shares), mp_context=multiprocessing.get_context("spawn")) as pool:
        done = [pool.submit(_worker, share, i, len(shares), options, run) for i, share in enumerate(shares)]
        results = [future.result() for future in done]
    merged = {name: rows for result in results for name, rows in result.items()}
    return {f"{task}/{concept}": merged[f"{task}/{concept}"] for task, concept in suite}


def include_in_docs(path: Path, markdown: str, start: str = DOCS_START, end: str = DOCS_END) -> None:
    """Replace the text between the markers `start` and `end` in `path` (docs/results.md) with `markdown`."""
    text = path.read_text()
    if start not in text or end not in text:
        raise UserError(f"'{path}' has no {start} ... {end} section to replace")
    head, rest = text.split(start, 1)
    atomic_write_text(path, f"{head}{start}\n{markdown}\n{end}{rest.split(end, 1)[1]}")
