"""`score bench`: erase one concept with several methods and evaluate them all against one base, in one run.

The rows are `none` (the unmodified model) and the methods of the registry, each an `Eraser`: (pipe,
ErasureRequest) -> erased pipeline. The request names the task, the concept and the concept's ConceptSpec (built
once from the base model's vocabulary), never the protocol's prompts, so no method trains on the prompts it is
scored on. A method that raises becomes a failed row with its error; the others still run. Each finished row is
saved at once (`<method>/row.json`, keyed by everything that determines it), so `--resume` skips what a killed
run finished.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from score_erasure.attacks import get_attack
from score_erasure.backends import backend_for
from score_erasure.backends.base import resolution
from score_erasure.certify.certificate import CertifyConfig, certify_pipelines
from score_erasure.errors import UserError, validated_config
from score_erasure.evaluation.cache import ImageCache, default_cache_dir
from score_erasure.evaluation.evaluate import Sampled, make_scorers, run_config, sample, score_sampled
from score_erasure.evaluation.metrics import Interval, robust_h
from score_erasure.evaluation.protocol import resolve_protocol
from score_erasure.evaluation.report import write_report
from score_erasure.io import atomic_write_json, atomic_write_text, output_folder, release_folder
from score_erasure.jobs.attack import Subject, attack_pipeline
from score_erasure.methods import METHODS, get_method
from score_erasure.models import ModelRef, resolve_model
from score_erasure.progress import log
from score_erasure.provenance import compute, peak_rss_mb, provenance, reset_peak_rss, versions
from score_erasure.reporting import Metric, figure, fmt, metric_bars, write_figure
from score_erasure.spec import ConceptSpec

TABLE_METRICS = ("acc_e", "acc_g", "acc_s", "h", "fid", "kid", "ssim", "psnr")
V2_METRICS = ("acc_c", "acc_n", "fid_ratio", "h_rob")  # benchmark v2 (a format-2 protocol)
CERTIFICATE_COLUMNS = ("mi_nats", "base_mi_nats")


@dataclass(frozen=True)
class ErasureRequest:
    """What a method is asked to erase: a task of the protocol, a concept's canonical name, the base model's
    name and the concept's spec in the base model's vocabulary."""

    task: str
    concept: str
    base_model: str
    spec: ConceptSpec


Eraser = Callable[..., object]  # (pipe, ErasureRequest) -> erased pipeline


def keep_unchanged(pipe, request: ErasureRequest):
    """The `none` method: the unmodified model, the reference row of every bench."""
    return pipe


def eraser(name: str, overrides: dict | None = None) -> Eraser:
    """Method `name` with its config overridden, as a bench row runs it."""
    method = get_method(name)
    config = method.config(overrides)  # a bad override fails here, before the bench starts

    def erase_for_bench(pipe, request: ErasureRequest):
        denoiser = backend_for(pipe)  # a TokenGenerator for an autoregressive model
        method.check_supports(denoiser)
        method.fit(denoiser, request.spec, config, show_progress=False)
        denoiser.network.requires_grad_(False)
        return pipe

    return erase_for_bench


def method_registry() -> dict[str, Eraser]:
    """Every method `bench` can run, by name."""
    return {"none": keep_unchanged, **{name: eraser(name) for name in METHODS}}


@dataclass
class BenchRow:
    method: str
    status: str  # "ok" or "failed"
    error: str | None = None
    erase_seconds: float | None = None
    peak_rss_mb: float | None = None  # of the bench process while it loaded a fresh copy and erased
    seconds: float | None = None
    metrics: dict[str, dict] = field(default_factory=dict)
    report: str | None = None


def attack_columns(attacks: list[str], certify: bool = False) -> tuple[str, ...]:
    """The columns after the evaluation's: one ASR per attack, then the certificate's."""
    return tuple(f"asr_{a}" for a in attacks) + (CERTIFICATE_COLUMNS if certify else ())


def table_columns(rows: list[BenchRow], attacks: list[str], certify: bool = False) -> tuple[str, ...]:
    """TABLE_METRICS, those of V2_METRICS that some row has (a format-2 protocol; h_rob with attacks), then the
    attacks' and the certificate's."""
    return (TABLE_METRICS + tuple(k for k in V2_METRICS if any(k in r.metrics for r in rows))
            + attack_columns(attacks, certify))


def robust_metrics(metrics: dict[str, dict]) -> dict[str, dict]:
    """h_rob from a row's acc_e, acc_s, acc_c and its worst attack (none without attacks or acc_c)."""
    asr = [Interval(**m) for k, m in metrics.items() if k.startswith("asr_")]
    if not asr or "acc_c" not in metrics:
        return {}
    worst = max(asr, key=lambda m: m.value)
    acc = {k: Interval(**metrics[k]) for k in ("acc_e", "acc_s", "acc_c")}
    return {"h_rob": robust_h(acc["acc_e"], worst, acc["acc_s"], acc["acc_c"]).as_dict()}


def _attack_metrics(erased, name: str, base_pipe, base: Sampled, identity: str, request: ErasureRequest, protocol,
                    scorers, out: Path, attacks: list[str], compositional: list[str],
                    base_draws: dict | None = None) -> dict[str, dict]:
    """Each attack's ASR on the erased pipeline (not resumable: an erased pipeline has no files to key it);
    `base_draws` keeps the base's target images from row to row."""
    subject = Subject(erased, base_pipe, name, request.base_model, identity, base.hash)
    found = {}
    for attack in attacks:
        entry = get_attack(attack)
        log(f"bench: {attack} on {name}")
        report = attack_pipeline(subject, entry, entry.config(), protocol, request.concept, out / f"attack-{attack}",
                                 judge=scorers.judge, spec=request.spec, compositional=compositional,
                                 cache=ImageCache(None), resume=False, base_draws=base_draws)
        found[f"asr_{attack}"] = report.asr.model_dump()
    return found


def _certificate_metrics(erased, name: str, base_pipe, base: Sampled, identity: str, request: ErasureRequest,
                         protocol, out: Path, attacks: list[str], overrides: dict,
                         cache: ImageCache | None = None) -> dict[str, dict]:
    """`score certify` on the erased pipeline, its concept prompts joined by what this row's attacks found; the
    base's images of the inputs every row shares come from `cache` after the first row."""
    log(f"bench: certificate of {name}")
    folders = [out / f"attack-{a}" for a in attacks if any((out / f"attack-{a}" / "prompts").glob("*.safetensors"))]
    report = certify_pipelines(erased, base_pipe, (name, request.base_model), (identity, base.hash), request.concept,
                               protocol, request.spec, folders,
                               validated_config(CertifyConfig, overrides, "certify"),
                               out / "certify", cache=cache)
    return {k: getattr(report, k).model_dump() for k in CERTIFICATE_COLUMNS}


def _row_key(name: str, request: ErasureRequest, base: Sampled, protocol, attacks: list[str],
             variant: tuple[str, dict] | None, certify: dict | None = None) -> dict:
    """Everything a finished row depends on: a saved row is reused only when all of it is unchanged."""
    return {"method": name, "variant": list(variant) if variant else None, "task": request.task,
            "concept": request.concept, "base_hash": base.hash, "protocol_hash": protocol.hash,
            "attacks": list(attacks), "config": method_config(name, variant), "versions": versions(),
            "compute": compute(),
            **({"certify": certify} if certify is not None else {})}


def method_config(name: str, variant: tuple[str, dict] | None) -> dict | None:
    """The resolved config a row was computed with (defaults included), so that a changed default reruns it."""
    method, overrides = variant if variant else (name, {})
    return METHODS[method].config(overrides).model_dump(mode="json") if method in METHODS else None


def _saved_row(folder: Path, key: dict) -> BenchRow | None:
    path = folder / "row.json"
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    return BenchRow(**saved["row"]) if saved.get("key") == key else None


def _run_method(name: str, erase: Eraser, request: ErasureRequest, model: ModelRef, base: Sampled, protocol,
                scorers, out: Path, config: dict, base_pipe=None, attacks: list[str] = (),
                certify: dict | None = None, cache: ImageCache | None = None,
                base_draws: dict | None = None) -> BenchRow:
    start = time.time()
    measured_alone = reset_peak_rss()
    pipe = model.load()  # a fresh copy per method: a method may edit the pipeline in place
    erase_start = time.time()
    erased = erase(pipe, request)
    erase_seconds = time.time() - erase_start
    peak = peak_rss_mb() if measured_alone else None
    if resolution(erased) != resolution(pipe):
        raise UserError(f"method '{name}' changed the resolution from {resolution(pipe)} to {resolution(erased)}")
    # An erased pipeline has no files to hash and may differ from run to run: its images are not cached.
    sampled = (Sampled(name, base.hash, base.images) if erase is keep_unchanged
               else sample(erased, name, f"erased-from:{base.hash}:{name}", protocol, request.concept,
                           ImageCache(None)))
    report = score_sampled(sampled, base, protocol, request.concept, scorers, {**config, "method": name})
    report.seconds = time.time() - start
    write_report(report, sampled.images, base.images, out / name)
    asr = _attack_metrics(erased, name, base_pipe, base, sampled.hash, request, protocol, scorers, out / name,
                          list(attacks), model.compositional_prompts(request.concept), base_draws) if attacks else {}
    # The unmodified model is certified against itself (one set of images, not two).
    leakage = (_certificate_metrics(base_pipe if erase is keep_unchanged else erased, name, base_pipe, base,
                                   sampled.hash, request, protocol, out / name, list(attacks), certify, cache)
               if certify is not None else {})
    measured = {**{k: v.model_dump() for k, v in report.metrics.items()}, **asr, **leakage}
    return BenchRow(name, "ok", erase_seconds=erase_seconds, peak_rss_mb=peak, seconds=time.time() - start,
                    metrics={**measured, **robust_metrics(measured)},
                    report=str(Path(name) / "report.html"))


def bench(model: str, concept: str, methods: list[str], out: Path, task: str | None = None,
          protocol_path: Path | None = None, cache_dir: Path | None = None, use_cache: bool = True,
          fid_features: Path | None = None, clip_model: str | None = None, command: str = "",
          attacks: list[str] | None = None, variants: dict[str, tuple[str, dict]] | None = None,
          resume: bool = False, certify: dict | None = None, overwrite: bool = False) -> list[BenchRow]:
    """Evaluate every method against `model` (the base); writes results.md, results.json, results.png and one
    report folder per method under `out`. Each of `attacks` adds an ASR column (`asr_<attack>`). `variants`
    adds rows `label -> (method, config overrides)`: an ablation is a variant of a method. With `resume`, a
    method whose saved row matches this run (same base, protocol, attacks, variant, versions) is not rerun.
    `certify` (CertifyConfig overrides; {} for the defaults) adds each row's leakage certificate (`mi_nats`,
    `base_mi_nats`; the attacks' finds among its concept prompts)."""
    start = time.time()
    registry = method_registry()
    out = output_folder(out, "bench", resume=resume, overwrite=overwrite)
    unknown = [m for m in methods if m not in registry]
    if unknown or not (methods or variants):
        raise UserError(f"unknown method '{(unknown or [''])[0]}'; choose one or more of: {', '.join(registry)}")
    variants = dict(variants or {})
    if variants:
        for label, (method, overrides) in variants.items():
            if label in registry:
                raise UserError(f"variant label '{label}' is already a method's name; choose another")
            registry[label] = eraser(method, overrides)
        methods = [*methods, *variants]
    attacks = list(attacks or [])
    if certify is not None:
        validated_config(CertifyConfig, certify, "certify")  # a bad override fails before any erasure
    for attack in attacks:
        get_attack(attack)
    protocol = resolve_protocol(task, protocol_path, concept)
    concept = protocol.canonical(concept)  # `-c Star` is the protocol's star
    scorers = make_scorers(protocol, concept, fid_features, clip_model)
    cache = ImageCache((cache_dir or default_cache_dir()) if use_cache else None)
    config = run_config(protocol, protocol_path, cache)
    base_model = resolve_model(model)
    request = ErasureRequest(protocol.task, concept, model, base_model.spec([concept]))
    rows: list[BenchRow] = []
    # No bar spans the methods: a method's own progress bar (and generation's) must be free to show.
    log(f"bench: sampling the base model '{model}'")
    base_pipe = base_model.load()
    base = sample(base_pipe, model, base_model.hash, protocol, concept, cache, floor=True)
    base_draws: dict = {}  # the attacks' target images of the base, drawn once for every row
    for i, name in enumerate(methods, 1):
        key = _row_key(name, request, base, protocol, attacks, variants.get(name), certify)
        saved = _saved_row(Path(out) / name, key) if resume else None
        if saved is not None:
            log(f"bench [{i}/{len(methods)}]: {name} (done in an earlier run: kept)")
            rows.append(saved)
            continue
        log(f"bench [{i}/{len(methods)}]: {name}")
        try:
            rows.append(_run_method(name, registry[name], request, base_model, base, protocol, scorers, Path(out),
                                    config, base_pipe, attacks, certify, cache, base_draws))
            atomic_write_json(Path(out) / name / "row.json", {"key": key, "row": asdict(rows[-1])})
        except Exception as exc:  # a failed method is a row of the table, not the end of the run
            atomic_write_text(Path(out) / name / "error.txt", traceback.format_exc())
            first = str(exc).splitlines()[0] if str(exc) else ""
            rows.append(BenchRow(name, "failed", error=f"{type(exc).__name__}: {first}"[:300]))
            log(f"{name} failed: {rows[-1].error}")
    write_results(rows, Path(out), {"command": command, "task": protocol.task, "concept": concept, "model": model,
                                    "base_hash": base.hash, "protocol": protocol.name,
                                    "protocol_hash": protocol.hash, "seconds": time.time() - start,
                                    "attacks": attacks, "certify": certify is not None,
                                    "variants": {k: {"method": m, "config": o} for k, (m, o) in variants.items()},
                                    "cache": {"hits": cache.hits, "generated": cache.generated}})
    release_folder(out)
    return rows


def _cell(metric: dict | None) -> str:
    return "" if metric is None else f"{fmt(metric['value'])} [{fmt(metric['ci_low'])}, {fmt(metric['ci_high'])}]"


def results_markdown(rows: list[BenchRow], meta: dict) -> str:
    columns = table_columns(rows, meta.get("attacks", []), meta.get("certify", False))
    lines = [f"# Bench: {meta['task']} / {meta['concept']} on `{meta['model']}`", "",
             f"Command: `{meta['command']}`", "",
             f"Protocol `{meta['protocol']}` ({meta['protocol_hash'][:16]}), base {meta['base_hash'][:16]}; "
             f"values with 95% bootstrap intervals; {meta['seconds']:.0f} s in all. fid and kid are measured on the "
             "judge's features (kid: squared MMD with a cubic polynomial kernel, raw feature units).", "",
             "| method | " + " | ".join(columns) + " | erase s | peak RSS MB | status |",
             "|---" * (len(columns) + 4) + "|"]
    for row in rows:
        cells = [_cell(row.metrics.get(k)) for k in columns]
        erase = "" if row.erase_seconds is None else f"{row.erase_seconds:.1f}"
        rss = "" if row.peak_rss_mb is None else f"{row.peak_rss_mb:.0f}"
        status = "ok" if row.status == "ok" else f"failed: {row.error}".replace("|", "\\|")
        lines.append(f"| {row.method} | " + " | ".join(cells) + f" | {erase} | {rss} | {status} |")
    return "\n".join(lines) + "\n"


def results_plot(rows: list[BenchRow], path: Path) -> None:
    done = [r for r in rows if r.status == "ok"]
    if not done:
        return
    fig, (acc_ax, fid_ax) = figure(10, 3.2, ncols=2, gridspec_kw={"width_ratios": [3, 1]})
    series = {r.method: {k: Metric(**v) for k, v in r.metrics.items()} for r in done}
    metric_bars(acc_ax, ["acc_e", "acc_g", "acc_s", "h"], series)
    acc_ax.set_ylim(0, 1.05)
    metric_bars(fid_ax, ["fid"], series)
    fig.tight_layout()
    write_figure(fig, path)


def write_results(rows: list[BenchRow], out: Path, meta: dict) -> None:
    atomic_write_json(out / "results.json", {**meta, "rows": [asdict(r) for r in rows], **provenance()})
    atomic_write_text(out / "results.md", results_markdown(rows, meta))
    results_plot(rows, out / "results.png")

