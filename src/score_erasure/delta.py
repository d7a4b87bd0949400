"""ErasureDelta: what a method changed, and nothing else, in one safetensors file.

Only the tensors a method modified are stored (keyed by the network's parameter names), with the base
model's id and content hash, so a delta is applied to exactly the model it was computed from. The network's
tensors keep their own names; a method that also trains another component of the pipeline (AdvUnlearn: the
text encoder) stores those as `<component>:<name>`, so `apply` and a merge write them where they belong. A method
that edits at inference time instead (DVE) stores its hook's tensors as `hook.<name>.<tensor>` and its settings
in `hooks`; applying the delta re-installs the hook.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from score_erasure import __version__
from score_erasure.backends import Denoiser, denoiser_for
from score_erasure.errors import UserError
from score_erasure.io import load_tensors, save_tensors

COMPONENT_SEP = ":"  # "text_encoder:encoder.layer.0.output.dense.weight": a tensor of another component
HOOKS_ATTR = "_score_erasure_hooks"  # network attribute: name -> installed inference-time edit
# Re-installs one saved hook: (denoiser, the hook's tensors, its settings) -> None.
HookRestorer = Callable[[Denoiser, dict[str, torch.Tensor], dict], None]


def attach_hook(network, hook, before: bool) -> None:
    """Register an inference-time edit on the network (`before`: on its inputs, else on its output) and record it
    by `hook.name`, where a delta built from the network finds it."""
    if before:
        network.register_forward_pre_hook(hook, with_kwargs=True)
    else:
        network.register_forward_hook(hook, with_kwargs=True)
    network.__dict__.setdefault(HOOKS_ATTR, {})[hook.name] = hook


def editable_parameters(pipe, network: str, components: tuple[str, ...] = ()) -> dict[str, torch.nn.Parameter]:
    """The parameters an erasure may change, named as a delta names them: the network's (the pipeline's
    attribute `network`) by their own names, those of each other pipeline attribute in `components` prefixed."""
    named = dict(getattr(pipe, network).named_parameters())
    for component in components:
        named |= {f"{component}{COMPONENT_SEP}{k}": v for k, v in getattr(pipe, component).named_parameters()}
    return named


def installed_hooks(network) -> dict:
    """The inference-time edits a method attached to a network, by name."""
    return dict(network.__dict__.get(HOOKS_ATTR, {}))


@dataclass
class ErasureDelta:
    tensors: dict[str, torch.Tensor]
    method: str
    concepts: list[str]
    base_model: str
    base_hash: str
    network: str = "unet"
    config: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # e.g. the MI trace, timings
    hooks: dict = field(default_factory=dict)  # inference-time edits: name -> settings

    @classmethod
    def from_changes(cls, before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], hooks: dict | None = None,
                     **meta) -> ErasureDelta:
        """Keep the tensors of `after` that differ from `before`, plus the state of installed `hooks`
        (name -> hook with `tensors()` and `config()`)."""
        changed = {k: v.detach().clone() for k, v in after.items() if not torch.equal(v, before[k])}
        for name, hook in (hooks or {}).items():
            changed |= {f"hook.{name}.{k}": v.detach().clone() for k, v in hook.tensors().items()}
        return cls(tensors=changed, hooks={name: hook.config() for name, hook in (hooks or {}).items()}, **meta)

    def metadata(self) -> dict:
        return {"method": self.method, "concepts": self.concepts, "base_model": self.base_model,
                "base_hash": self.base_hash, "network": self.network, "config": self.config,
                "extra": self.extra, "hooks": self.hooks, "score_erasure_version": __version__}

    def save(self, path: Path) -> None:
        save_tensors(self.tensors, path, self.metadata())

    @classmethod
    def load(cls, path: Path) -> ErasureDelta:
        try:
            tensors, meta = load_tensors(path)
        except Exception as exc:
            raise UserError(f"cannot read erasure delta '{path}': {exc}") from exc
        meta.pop("score_erasure_version", None)
        return cls(tensors=tensors, **meta)

    def apply(self, pipe, base_hash: str | None = None, restorers: Mapping[str, HookRestorer] | None = None) -> None:
        """Write the changed tensors into `pipe` in memory and re-install its inference-time hooks with
        `restorers` (hook name -> restore; the methods registry's `hook_restorers()`); refuse a pipeline of
        another base model."""
        if base_hash is not None and base_hash != self.base_hash:
            raise UserError(f"this delta was computed from base model '{self.base_model}' "
                            f"(hash {self.base_hash[:12]}), not from the given model (hash {base_hash[:12]}); "
                            "apply it to the model it was erased from")
        weights = {k: v for k, v in self.tensors.items() if not k.startswith("hook.")}
        components = tuple(sorted({k.split(COMPONENT_SEP)[0] for k in weights if COMPONENT_SEP in k}))
        missing = [c for c in components if getattr(pipe, c, None) is None]
        if missing:
            raise UserError(f"delta changes the pipeline's '{missing[0]}', which the model lacks; it belongs to "
                            "another architecture")
        params = editable_parameters(pipe, self.network, components)
        unknown = sorted(set(weights) - set(params))
        if unknown:
            raise UserError(f"delta names {len(unknown)} tensors the model lacks (e.g. '{unknown[0]}'); "
                            "it belongs to another architecture")
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value.to(params[name].dtype))
        if self.hooks:
            denoiser = denoiser_for(pipe)
            for name, settings in self.hooks.items():
                if name not in (restorers or {}):
                    raise UserError(f"this delta needs the '{name}' hook, which this version does not know; "
                                    "upgrade score-erasure")
                prefix = f"hook.{name}."
                restorers[name](denoiser, {k[len(prefix):]: v for k, v in self.tensors.items()
                                           if k.startswith(prefix)}, settings)

    def require_mergeable(self) -> None:
        """A hook is code, not weights: a pipeline saved with save_pretrained would silently lose it."""
        if self.hooks:
            raise UserError(f"'{self.method}' edits the model at inference time ({', '.join(self.hooks)} hook), "
                            "so it cannot be merged into saved weights; pass the erase folder itself as --model")
