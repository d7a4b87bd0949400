"""The Denoiser: the one interface every erasure method and attack talks to.

It hides what the network predicts (noise, v or velocity), how prompts are encoded, how latents are
laid out, and which weights count as cross-attention. Methods combine predictions linearly (guidance
targets); that is valid in any parameterisation that is affine in the noise for a fixed x_t, which
epsilon, v and flow velocity all are.
"""

from __future__ import annotations

import copy
import re
from abc import ABC, abstractmethod

import torch
from torch import nn

from score_erasure.errors import UserError
from score_erasure.options import DTYPES, OPTIONS

FAMILIES = ("sd", "sdxl", "flux")  # SD1.x/2.x and the embedded model; SDXL; FLUX and embedded-flux
PARAMETER_GROUPS = ("inputs", "xattn-kv", "xattn", "non-xattn", "image-attn", "full")


class Denoiser(ABC):
    """A text-conditioned denoising network plus everything needed to run it on prompts."""

    #: regexes over parameter names, per backend: the K/V projections that read text, all of the attention
    #: that reads text, and the image stream's own attention (its self-attention and the queries with which
    #: it reads the text)
    XATTN_KV: str
    XATTN: str
    IMAGE_ATTN: str
    #: attribute of the pipeline that holds the network (`unet`, `transformer`)
    network_attr: str
    #: the network family a method declares support for: one of FAMILIES
    family: str

    def __init_subclass__(cls, family: str | None = None, network_attr: str | None = None, **kwargs):
        """`class SDDenoiser(Denoiser, family="sd", network_attr="unet")`: a backend declares both in its header."""
        super().__init_subclass__(**kwargs)
        cls.family = family or getattr(cls, "family", None)
        cls.network_attr = network_attr or getattr(cls, "network_attr", None)

    def __init__(self, pipe, network: nn.Module | None = None):
        self.pipe = pipe
        self.network = network if network is not None else getattr(pipe, self.network_attr)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    # --- prompts -------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        """The tokenizer of the text encoder that attacks optimise through (`encode_embeddings`)."""
        return self.pipe.tokenizer

    @property
    def text_encoder(self) -> nn.Module:
        """The text encoder whose input embeddings attacks optimise."""
        return self.pipe.text_encoder

    @property
    def text_encoder_attr(self) -> str:
        """The pipeline attribute holding `text_encoder` (`text_encoder`, `text_encoder_2` on FLUX.1): where a
        delta that changes the encoder writes it."""
        return next(name for name, module in self.pipe.components.items() if module is self.text_encoder)

    @abstractmethod
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Conditioning for each prompt (no gradient: text encoders are frozen)."""

    @abstractmethod
    def encode_embeddings(self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor,
                          attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Conditioning from token embeddings, with gradient: what `encode` computes for the tokens
        `input_ids`, with the text encoder's input-embedding lookup replaced by `inputs_embeds` (B, L, width).
        Attacks optimise prompts through it."""

    @abstractmethod
    def pipeline_inputs(self, guidance: float, prompts: list[str] | None = None,
                        cond: torch.Tensor | None = None) -> dict:
        """Keyword arguments for the pipeline's own `__call__` that draw `prompts` (or the conditioning `cond`
        of `encode`/`encode_embeddings`) with classifier-free guidance `guidance`: generation runs through the
        pipeline, so its images are what a user of the pipeline gets."""

    @abstractmethod
    def recondition(self, network_kwargs: dict, cond: torch.Tensor) -> dict:
        """The network's keyword arguments (as the pipeline passed them) with the text inputs replaced by the
        conditioning `cond`: how an inference-time edit re-evaluates the network at another prompt."""

    @abstractmethod
    def conditioning(self, network_kwargs: dict) -> torch.Tensor:
        """The conditioning inside the network's keyword arguments, as `encode` returns it: the inverse of
        `recondition`, for an edit of the text embedding made inside the network call."""

    # --- one network evaluation -----------------------------------------------------------------
    @abstractmethod
    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The network's native output at (x_t, t, cond)."""

    def predict_many(self, inputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        """`predict` at several (x_t, t, cond) in one batched call (much cheaper than one call each)."""
        sizes = [len(x) for x, _, _ in inputs]
        t = torch.cat([torch.as_tensor(t).reshape(-1).expand(len(x)) for x, t, _ in inputs])
        pred = self.predict(torch.cat([x for x, _, _ in inputs]), t, torch.cat([c for _, _, c in inputs]))
        return list(pred.split(sizes))

    @abstractmethod
    def clean_estimate(self, x_t: torch.Tensor, t: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """One-step estimate x0_hat of the clean latent from a prediction."""

    # --- sampling ---------------------------------------------------------------------------------
    @abstractmethod
    def timesteps(self, steps: int) -> torch.Tensor:
        """The sampler's timesteps, from pure noise (index 0) to clean."""

    @abstractmethod
    def noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Initial latent noise for n samples."""

    @abstractmethod
    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network is trained to output at x_t = add_noise(x0, noise, t): the denoising loss's target."""

    @abstractmethod
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The forward process: x_t from a clean latent (per-sample t allowed)."""

    @abstractmethod
    def sample(self, cond: torch.Tensor, steps: int, until: int | None = None, guidance: float = 3.0,
               generator: torch.Generator | None = None, x: torch.Tensor | None = None,
               start: int = 0) -> torch.Tensor:
        """Sample with classifier-free guidance from step `start` (x, or fresh noise) to step `until` of
        `steps` (the end when None), without gradients; the result is a latent at `timesteps(steps)[until]`."""

    @abstractmethod
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Latents to images in [0, 1], (N, 3, H, W)."""

    # --- parameters ------------------------------------------------------------------------------
    def parameters(self, group: str) -> dict[str, nn.Parameter]:
        """Named parameters of a group: `inputs` (the weights that read the conditioning itself), `xattn-kv`,
        `xattn`, `non-xattn` (ESD-u), `image-attn` (TRCE's second stage) or `full`."""
        if group not in PARAMETER_GROUPS:
            raise UserError(f"unknown parameter group '{group}'; choose one of: {', '.join(PARAMETER_GROUPS)}")
        named = dict(self.network.named_parameters())
        if group == "full":
            return named
        if group == "inputs":
            return {k: named[k] for k in self.conditioning_readers()}
        if group in ("xattn-kv", "image-attn"):
            pattern = self.XATTN_KV if group == "xattn-kv" else self.IMAGE_ATTN
            return {k: v for k, v in named.items() if re.search(pattern, k)}
        xattn = {k: v for k, v in named.items() if re.search(self.XATTN, k)}
        return xattn if group == "xattn" else {k: v for k, v in named.items() if k not in xattn}

    def text_encoder_weights(self) -> dict[str, nn.Parameter]:
        """The text encoder's weights outside its embedding tables (tokens, positions, relative-position biases):
        what a method that trains the encoder (AdvUnlearn) may change."""
        encoder = self.text_encoder
        tables = {id(p) for m in encoder.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
        return {k: p for k, p in encoder.named_parameters() if id(p) not in tables}

    def frozen_copy(self) -> Denoiser:
        """The same model with a frozen deep copy of the network: epsilon_0 of the methods' equations. Its
        predictions come back in the caller's precision whatever the copy's own (`predict` casts)."""
        twin = copy.copy(self)
        twin.network = copy.deepcopy(self.network).requires_grad_(False).eval()
        if OPTIONS.frozen_dtype is not None:  # --frozen-dtype bf16: half the memory of the copy
            twin.network.to(DTYPES[OPTIONS.frozen_dtype])
        return twin

    def unconditional(self, n: int = 1) -> torch.Tensor:
        return self.encode([""] * n)

    def token_states(self, cond: torch.Tensor) -> torch.Tensor:
        """The per-token text states inside a conditioning (B, L, D): what the K/V projections read on SD."""
        return cond

    def conditioning_readers(self) -> dict[str, str]:
        """The network's linear weights that read the conditioning itself, each with the part it reads ("states"
        or "pooled"): where closed forms over text embeddings (UCE) are exact. On SD, the cross-attention K/V."""
        return {k: "states" for k, v in self.parameters("xattn-kv").items() if v.ndim == 2}


def encode_with_input_embeddings(encoder: nn.Module, input_ids: torch.Tensor, inputs_embeds: torch.Tensor,
                                 attention_mask: torch.Tensor | None = None, layer: int | None = None):
    """The encoder's output for `input_ids` with its input-embedding lookup replaced by `inputs_embeds`: the last
    hidden states, or with `layer` the whole output (hidden states of every layer included). CLIP's text model
    takes no `inputs_embeds` (it needs the ids to find the end token), so the embedding table's output is
    replaced for this one call: one code path for BERT, CLIP and T5. Every module that looks the table up is
    replaced (T5's encoder reads a tied copy of it, `encoder.embed_tokens`, not `get_input_embeddings()`)."""
    device = next(encoder.parameters()).device
    table = encoder.get_input_embeddings()
    lookups = [m for m in encoder.modules() if isinstance(m, nn.Embedding) and m.weight is table.weight]
    handles = [m.register_forward_hook(lambda _module, _args, _out: inputs_embeds) for m in lookups or [table]]
    try:
        mask = None if attention_mask is None else attention_mask.to(device)
        out = encoder(input_ids.to(device), attention_mask=mask, output_hidden_states=layer is not None)
        return out if layer is not None else out[0]
    finally:
        for handle in handles:
            handle.remove()


class PooledConditioning:
    """For backends whose conditioning is token states plus a pooled vector (SDXL, FLUX), packed by `pack_pooled`;
    the class sets `states_width` and `pooled_width`."""

    states_width: int
    pooled_width: int

    def unpack(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return unpack_pooled(cond, self.states_width, self.pooled_width)

    def token_states(self, cond: torch.Tensor) -> torch.Tensor:
        return self.unpack(cond)[0]

    def pooled(self, cond: torch.Tensor) -> torch.Tensor:
        return self.unpack(cond)[1]


def pack_pooled(states: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """Token states (B, L, D) and a pooled vector (B, P) as one conditioning (B, L + 1, max(D, P)): the pooled
    vector is a last token, both zero-padded to the common width. Models that read a pooled vector besides the
    tokens (SDXL, FLUX) keep one tensor per prompt, so methods concatenate and index conditionings as on SD."""
    width = max(states.shape[-1], pooled.shape[-1])
    states = torch.nn.functional.pad(states, (0, width - states.shape[-1]))
    return torch.cat([states, torch.nn.functional.pad(pooled, (0, width - pooled.shape[-1])).unsqueeze(1)], 1)


def unpack_pooled(cond: torch.Tensor, states_width: int, pooled_width: int) -> tuple[torch.Tensor, torch.Tensor]:
    return cond[:, :-1, :states_width], cond[:, -1, :pooled_width]


def resolution(pipe) -> tuple[int, int]:
    """The (height, width) a pipeline generates by default."""
    if hasattr(pipe, "image_size"):  # an autoregressive pipeline knows its own
        return pipe.image_size
    network = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    size = getattr(pipe, "default_sample_size", None) or network.config.sample_size
    side = int(size) * int(pipe.vae_scale_factor)
    return side, side


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of token states over the real (unpadded) tokens: sentence-transformers' pooling."""
    weights = mask.to(states.dtype).unsqueeze(-1)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1)
