"""The `score` command: thin wrappers that parse, validate, call the library and print with rich.

The top layer of the package: no library module imports it. Commands import the library inside their bodies,
so that `score --help` and the listings start without loading torch and diffusers; that is the one place where
the package imports its own modules inside functions.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated

# In a log (stdout not a terminal) typer's help would be laid out for 80 columns, cutting option names; it reads
# its width once, when it is imported.
if not sys.stdout.isatty():
    os.environ.setdefault("TERMINAL_WIDTH", "200")

import typer  # noqa: E402
from rich.table import Table

from score_erasure.cli.attacks import register as register_attacks
from score_erasure.cli.certify import register as register_certify
from score_erasure.cli.evaluation import print_evaluation
from score_erasure.cli.evaluation import register as register_evaluation
from score_erasure.cli.options import (
    JsonOpt,
    ModelOpt,
    NameOpt,
    OverwriteOpt,
    SeedOpt,
    console,
    err,
    print_registry,
    read_overrides,
)
from score_erasure.errors import UserError

app = typer.Typer(help="Robust concept erasure for text-to-image diffusion models.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
world = typer.Typer(help="The embedded ground-truth world: its model, judge and quality check.",
                    no_args_is_help=True)
app.add_typer(world, name="world")


def _quiet_libraries() -> None:
    """Keep every deprecation notice out of the user's terminal (the package already quiets the libraries' logs)."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


@app.callback()
def run_options(
    dtype: Annotated[str, typer.Option(help="Precision of the weights: fp32, fp16 or bf16 (on GPUs bf16 halves "
                                            "memory; FLUX needs it).")] = "fp32",
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N, or auto: this process's GPU under `accelerate "
                                             "launch`, else cuda when there is one, else cpu.")] = "auto",
    gradient_checkpointing: Annotated[bool, typer.Option(help="Recompute activations in the backward pass: "
                                                              "less memory for erasure, more time.")] = False,
    frozen_dtype: Annotated[str | None, typer.Option(help="Precision of the frozen base copy that methods keep "
                                                          "(e.g. bf16 next to fp32 training); default: --dtype.")]
    = None,
    threads: Annotated[int, typer.Option(min=1, help="CPU threads of torch, whatever the machine's cores or "
                                                     "OMP_NUM_THREADS: the same count gives the same numbers "
                                                     "(the documented ones used 2).")] = 2,
    cudnn_attention: Annotated[bool, typer.Option(help="PyTorch's cuDNN attention kernel on GPUs; turn it off if "
                                                       "FLUX training fails inside it (flash / memory-efficient "
                                                       "kernels run instead).")] = True,
) -> None:
    """Robust concept erasure for text-to-image diffusion models. The options here apply to every command."""
    from score_erasure.options import set_run_options

    set_run_options(dtype=dtype, device=device, gradient_checkpointing=gradient_checkpointing,
                    frozen_dtype=frozen_dtype, threads=threads, cudnn_attention=cudnn_attention)


def _verdicts(prompts: list[str], images, seeds: list[int]) -> list[dict]:
    """The world judge's reading of every image: prompt, seed, shape, colour, style, fire."""
    from score_erasure.toyworld.judge import WorldJudge

    judge = WorldJudge.load()
    out = []
    for i, prompt in enumerate(prompts):
        v = judge.judge(images[i])
        out += [{"prompt": prompt, "seed": seed, "shape": v.shape[j], "colour": v.colour[j], "style": v.style[j],
                 "fire": bool(v.fire[j])} for j, seed in enumerate(seeds)]
    return out


def _verdict_table(verdicts: list[dict]) -> Table:
    table = Table(title="judge verdicts (one line per image)")
    for col in ("prompt", "seed", "shape", "colour", "style", "fire"):
        table.add_column(col)
    for k, v in enumerate(verdicts):
        first = k == 0 or verdicts[k - 1]["prompt"] != v["prompt"]
        table.add_row(v["prompt"] if first else "", str(v["seed"]), v["shape"], v["colour"], v["style"],
                      "[red]yes[/]" if v["fire"] else "no")
    return table


@app.command("generate")
def generate_cmd(
    prompt: Annotated[list[str], typer.Option("--prompt", "-p", help="A prompt; repeat for several.")],
    out: Annotated[Path, typer.Option(help="Output folder for images, grid.png and generate.json.")],
    model: ModelOpt = "embedded",
    n: Annotated[int, typer.Option("-n", help="Images per prompt.")] = 4,
    seed: Annotated[int, typer.Option(min=0, help="Image j of each prompt uses seed + j.")] = 0,
    steps: Annotated[int, typer.Option(min=1, help="DDIM steps.")] = 25,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 3.0,
    judge: Annotated[bool, typer.Option(help="Print the embedded world judge's verdicts and save them in "
                                             "generate.json.")] = False,
    batch_size: Annotated[int, typer.Option(help="Images per pipeline call (the unit `accelerate launch` deals "
                                                 "out to processes).")] = 64,
    overwrite: OverwriteOpt = False,
) -> None:
    """Generate images for one or more prompts and a labelled grid; the same seed gives the same images."""
    from score_erasure import parallel
    from score_erasure.generate import generate, sampler_name, save_grid, save_images, validate_prompts
    from score_erasure.io import atomic_write_json, output_folder, release_folder
    from score_erasure.models import load_pipeline
    from score_erasure.provenance import provenance

    if n < 1 or batch_size < 1:
        raise UserError(f"-n and --batch-size must be positive (got {n} and {batch_size})")
    validate_prompts(prompt)
    out = output_folder(out, "generate", overwrite=overwrite)
    pipe = load_pipeline(model)
    seeds = list(range(seed, seed + n))
    images = generate(pipe, prompt, seeds, steps=steps, guidance=guidance, batch_size=batch_size)
    save_images(images, prompt, seeds, out)
    save_grid(images, prompt, out / "grid.png", col_labels=[f"seed {s}" for s in seeds])
    verdicts = _verdicts(prompt, images, seeds) if judge else None
    atomic_write_json(out / "generate.json", provenance(model=model, prompts=prompt, seeds=seeds, steps=steps,
                                                         guidance=guidance, sampler=sampler_name(pipe),
                                                         processes=parallel.state().num_processes,
                                                         **({"verdicts": verdicts} if judge else {})))
    if judge:
        console.print(_verdict_table(verdicts))
    release_folder(out)
    console.print(f"wrote {len(prompt) * n} images and {out / 'grid.png'}")


DEMO_PROMPTS = ["a striped red star", "Zorblat", "a blue circle on fire", "a picture of a heart"]


@app.command("demo")
def demo_cmd(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("out/demo"),
    concept: Annotated[str, typer.Option("--concept", "-c", help="Shape to erase (the object task).")] = "star",
    method: Annotated[str, typer.Option(help="Erasure method (see `score methods`).")] = "score",
    grid_only: Annotated[bool, typer.Option(help="Only the base model's grid and the judge's verdicts.")] = False,
) -> None:
    """The main job on the embedded model: erase a concept with SCORE and evaluate it against the base model
    (a few minutes on 2 CPU cores), after a grid of the base model with the judge's verdicts. Rerun into the same
    --out, it keeps (or continues) the same erasure and redraws the grid and the evaluation."""
    from score_erasure.jobs.erase import erase
    from score_erasure.jobs.evaluate import evaluate
    from score_erasure.models import resolve_model

    generate_cmd(prompt=DEMO_PROMPTS, out=out / "base", model="embedded", n=4, seed=0, steps=25, guidance=3.0,
                 judge=True, overwrite=True)
    if grid_only:
        return
    console.rule(f"erasing '{concept}' with {method}")
    base = resolve_model("embedded")
    erase(base, method, base.spec([concept]), out / "erased", resume=True)
    console.rule("evaluating the erased model against the base")
    report = evaluate(str(out / "erased"), concept, out / "evaluation", task="object", base="embedded",
                      overwrite=True)
    print_evaluation(console, report, f"{method} (no {concept})", "embedded", out / "evaluation")


@app.command("erase")
def erase_cmd(
    method: Annotated[str, typer.Option(help="Method name (see `score methods`).")],
    out: Annotated[Path, typer.Option(help="Output folder: delta.safetensors, erase.json (and pipeline/).")],
    concept: Annotated[list[str] | None, typer.Option("--concept", "-c", help="Concept to erase; repeat for several.")]
    = None,
    model: ModelOpt = "embedded",
    preserve: Annotated[list[str] | None, typer.Option(help="Prompt to preserve; repeat for several.")] = None,
    concept_file: Annotated[Path | None, typer.Option(help="TOML: concepts, synonyms, anchor, preserve.")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML/JSON overriding the method's config.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the same erasure from checkpoint.safetensors in --out.")]
    = False,
    overwrite: OverwriteOpt = False,
    merge: Annotated[bool, typer.Option(help="Also write the full erased pipeline to OUT/pipeline.")] = False,
    checkpoint_every: Annotated[int, typer.Option(help="Checkpoint every N steps.")] = 50,
) -> None:
    """Erase a concept from a model; writes only the changed tensors (an ErasureDelta) and a run record."""
    from score_erasure.jobs.erase import erase
    from score_erasure.methods import get_method
    from score_erasure.models import resolve_model

    get_method(method)
    base = resolve_model(model)
    spec = base.spec(concept or [], preserve, concept_file)
    delta = erase(base, method, spec, out, read_overrides(config), resume=resume, save_pipeline=merge,
                  checkpoint_every=checkpoint_every, overwrite=overwrite)
    record = json.loads((out / "erase.json").read_text())
    console.print(f"erased {', '.join(spec.concepts)} with {method} in {record['seconds']:.1f} s "
                  f"({len(delta.tensors)} tensors changed, peak RSS {record['peak_rss_mb']:.0f} MB) -> {out}")


@app.command("merge")
def merge_cmd(
    delta: Annotated[Path, typer.Argument(metavar="DELTA", help="An erase output folder or a delta.safetensors "
                                                                "file.")],
    out: Annotated[Path, typer.Option(help="Folder for the full diffusers pipeline.")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="Base model (default: the one the delta "
                                                                    "records).")] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Apply a delta to its base model and write a full diffusers pipeline (loads with plain diffusers)."""
    from score_erasure.delta import ErasureDelta
    from score_erasure.io import output_folder, release_folder
    from score_erasure.methods import hook_restorers
    from score_erasure.models import resolve_model

    path = delta / "delta.safetensors" if delta.is_dir() else delta
    if not path.is_file():
        raise UserError(f"no delta at '{delta}'; pass an erase output folder or a delta.safetensors file")
    d = ErasureDelta.load(path)
    d.require_mergeable()
    base = resolve_model(model or d.base_model)
    output_folder(out, "merge", overwrite=overwrite)
    pipe = base.load()
    d.apply(pipe, base_hash=base.hash, restorers=hook_restorers())
    pipe.save_pretrained(out)
    release_folder(out)
    console.print(f"wrote {out}")


@app.command("methods")
def methods_cmd(name: NameOpt = None, as_json: JsonOpt = False) -> None:
    """List the erasure methods, what each changes and its whole default config."""
    from score_erasure.methods import METHODS

    print_registry("erasure methods", {m.name: (f"{m.summary} [{m.kind}; {', '.join(m.families)}]",
                                                m.config().model_dump(mode="json")) for m in METHODS.values()},
                   name, as_json)


@world.command("train")
def world_train(
    out: Annotated[Path, typer.Option(help="Run folder (checkpoints, logs, vae/ and unet/).")] = Path("runs/embedded"),
    resume: Annotated[bool, typer.Option(help="Continue from the checkpoints in --out.")] = False,
    overwrite: OverwriteOpt = False,
    config: Annotated[Path | None, typer.Option(exists=True, dir_okay=False,
                                                help="JSON file overriding TrainConfig fields.")] = None,
    install: Annotated[bool, typer.Option(help="Copy the trained weights into the package (half precision).")]
    = False,
    arch: Annotated[str, typer.Option(help="'sd': the embedded model's VAE and UNet; 'flux': embedded-flux's "
                                           "transformer, on the shipped VAE; 'ar': the autoregressive model "
                                           "(a VQ-VAE and a Janus transformer; OUT/ar is its pipeline, "
                                           "embedded-ar once installed); 'var': the next-scale model "
                                           "(a multi-scale tokenizer from embedded-ar's VQ-VAE and a block-causal "
                                           "transformer; embedded-var once installed).")] = "sd",
) -> None:
    """Train an embedded model on the rendered world (sd: 102 minutes on 2 CPU cores; see the model card)."""
    from score_erasure.io import output_folder, release_folder
    from score_erasure.toyworld.train import TrainConfig, install_weights, train

    if arch not in ("sd", "flux", "ar", "var"):
        raise UserError(f"unknown --arch '{arch}'; choose sd, flux, ar or var")
    try:
        cfg = TrainConfig.model_validate(json.loads(config.read_text()) if config else {})
    except ValueError as err:  # a JSONDecodeError or pydantic's ValidationError
        raise UserError(f"--config {config}: {err}") from err
    output_folder(out, "train", resume=resume, overwrite=overwrite)
    record = train(out, cfg, resume=resume, arch=arch)
    release_folder(out)
    if not record.get("complete"):
        raise UserError(f"training stopped before the end; continue it with --resume --out {out}")
    console.print_json(data={"seconds": record["seconds"], "parameters": record["parameters"]})
    if install:
        install_weights(out, arch=arch)
        console.print("installed weights into the package")


@world.command("train-judge")
def world_train_judge(
    n: Annotated[int, typer.Option(help="Rendered training images.")] = 40_000,
    epochs: Annotated[int, typer.Option(help="Passes over them.")] = 6,
    seed: SeedOpt = 0,
) -> None:
    """Train the world's judge on rendered ground truth and install it in the package."""
    from score_erasure.toyworld import judge

    judge.train_judge(n=n, epochs=epochs, seed=seed)
    world_judge_check()


@world.command("judge-check")
def world_judge_check(
    n: Annotated[int, typer.Option(help="Fresh renders to score.")] = 2_000,
    seed: Annotated[int, typer.Option(min=0, help="Render seed (training used 10000+).")] = 12_345,
) -> None:
    """Accuracy of the judge on freshly rendered images, per head (the bar is 99%)."""
    from score_erasure.toyworld import judge

    acc = judge.accuracy(judge.WorldJudge.load(), n=n, seed=seed)
    table = Table(title=f"judge accuracy on {n} fresh renders (seed {seed})")
    table.add_column("head")
    table.add_column("accuracy", justify="right")
    table.add_column(">= 0.99")
    for head, value in acc.items():
        table.add_row(head, f"{value:.4f}", "[green]yes[/]" if value >= 0.99 else "[red]no[/]")
    console.print(table)


@world.command("samples")
def world_samples(
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("out/world-samples.png"),
    seed: SeedOpt = 0,
) -> None:
    """Render ground-truth examples of every family (rows: shapes; columns: styles, plain and on fire)."""
    import numpy as np

    from score_erasure.generate import save_grid
    from score_erasure.toyworld import render, vocab

    rng = np.random.default_rng(seed)
    columns = [(st.name, fire) for st in vocab.STYLES for fire in (False, True)]
    grid = np.stack([
        render.render_batch([render.sample_scene(rng, shape=sh.name, colour=vocab.COLOURS[(i + j) % 6].name,
                                                 style=st, fire=fire) for j, (st, fire) in enumerate(columns)])
        for i, sh in enumerate(vocab.SHAPES)
    ])
    save_grid(grid, [s.name for s in vocab.SHAPES], out,
              col_labels=[f"{st}{' + fire' if fire else ''}" for st, fire in columns])
    console.print(f"wrote {out}")


@world.command("check")
def world_check(
    model: ModelOpt = "embedded",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
    n: Annotated[int, typer.Option("-n", help="Images per prompt (at least 8 for the bar).")] = 8,
    seed: SeedOpt = 0,
    steps: int = 25,
    guidance: float = 3.0,
) -> None:
    """Measure the quality bar: how often the judge sees what the prompt names (DDIM, CFG, fixed seeds)."""
    from score_erasure.models import load_pipeline
    from score_erasure.toyworld.check import BARS, run_check

    if n < 1:
        raise UserError(f"-n must be positive (got {n})")
    result = run_check(load_pipeline(model), images_per_prompt=n, seed=seed, steps=steps, guidance=guidance)
    if as_json:
        print(json.dumps(result))
        return
    table = Table(title=f"world check: {model}, {n} images per prompt, DDIM {steps}, CFG {guidance}")
    for col in ("metric", "value", "bar", "met"):
        table.add_column(col)
    for key, value in result.items():
        if key == "seconds":
            continue
        bar = BARS.get(key)
        met = "" if bar is None else ("[green]yes[/]" if value >= bar else "[red]no[/]")
        table.add_row(key, f"{value:.3f}", "" if bar is None else f">= {bar:.2f}", met)
    console.print(table)
    console.print(f"{result['seconds']:.0f} s")


# --- further command groups register themselves here (one line each) ---
register_evaluation(app)
register_attacks(app)
register_certify(app)


def main() -> None:
    """Console entry point: user mistakes become one red line and exit status 2, never a traceback."""
    from score_erasure.io import release_all_folders

    _quiet_libraries()
    try:
        app()
    except UserError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    finally:
        release_all_folders()  # a command that stopped early gives its output folder back too
