"""The token backend: what methods, attacks and the evaluation need from an autoregressive image generator.

An autoregressive generator (Janus-Pro, Emu3, LlamaGen) draws an image as N discrete codes of a VQ tokenizer, one
at a time, each conditioned on the prompt and on the codes before it; the tokenizer's decoder turns the codes into
pixels. `TokenGenerator` is to these models what `Denoiser` is to diffusion: it hides how a prompt is formatted and
embedded, where the image-code logits come from and which weights are attention or feed-forward, so that a method
(S-VARE's per-token cross-entropy, VCE's preference loss over code log-probabilities) never imports a model class.

The conditioning is the prompt prefix as input embeddings (`TokenConditioning`), so that soft-prompt attacks
optimise it directly, as they optimise a text encoder's input embeddings on the Denoiser.
"""

from __future__ import annotations

import copy
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

TOKEN_FAMILIES = ("janus", "var", "emu3")
TOKEN_PARAMETER_GROUPS = ("attention", "ffn", "attention+ffn", "full")


@dataclass
class TokenConditioning:
    """A batch of prompt prefixes, left-padded: their input embeddings (B, L, width), attention mask (B, L) and
    token ids (B, L). The ids say which positions are special (kept by the unconditional prefix)."""

    embeds: torch.Tensor
    mask: torch.Tensor
    input_ids: torch.Tensor

    def __len__(self) -> int:
        return len(self.embeds)

    def __getitem__(self, rows) -> TokenConditioning:
        return TokenConditioning(self.embeds[rows], self.mask[rows], self.input_ids[rows])

    @staticmethod
    def cat(parts: list[TokenConditioning]) -> TokenConditioning:
        """Prefixes of one length, stacked (a prompt's and its unconditional prefix, say)."""
        return TokenConditioning(*(torch.cat([getattr(p, f) for p in parts]) for f in ("embeds", "mask", "input_ids")))

    def expand(self, n: int) -> TokenConditioning:
        """One prefix (a batch of 1) as n rows, sharing memory (and gradient) as `Tensor.expand` does."""
        return TokenConditioning(self.embeds.expand(n, -1, -1), self.mask.expand(n, -1), self.input_ids.expand(n, -1))


def code_kl(log_p: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) between next-code distributions, per code position and averaged: p as log-probabilities, q as
    logits (B, N, codebook). What the token methods' preservation terms and P4D's match compare."""
    return F.kl_div(torch.log_softmax(logits.float(), -1), log_p, log_target=True, reduction="none").sum(-1).mean()


class TokenGenerator(ABC):
    """A text-conditioned autoregressive generator of image codes, plus everything needed to run it on prompts."""

    #: the model family a method declares support for: one of TOKEN_FAMILIES
    family: str
    #: attribute of the pipeline that holds `network`
    network_attr: str
    #: regexes over the names of the generator's own parameters: its attention and feed-forward layers
    ATTENTION: str
    FFN: str

    def __init__(self, pipe):
        self.pipe = pipe
        self._frozen: nn.Module | None = None  # a frozen copy's own network (`frozen_copy`)

    def frozen_copy(self) -> TokenGenerator:
        """The same generator over a frozen deep copy of the network: the base model of the methods' equations,
        for logits on sequences drawn while the network trains."""
        twin = copy.copy(self)
        twin._frozen = copy.deepcopy(self.network).requires_grad_(False).eval()
        return twin

    @property
    @abstractmethod
    def network(self) -> nn.Module:
        """The module whose weights methods change (the autoregressive transformer and its heads)."""

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def tokenizer(self):
        """The prompt's tokenizer: the vocabulary soft-prompt attacks search and embed through."""
        return self.pipe.tokenizer

    @property
    def text_encoder(self) -> nn.Module:
        """The module that reads the prompt: the transformer itself, whose input embeddings are the prompt's
        (attacks optimise them through `get_input_embeddings()`, as through a diffusion model's text encoder)."""
        return self.network

    @abstractmethod
    def frame(self, body: list[int]) -> tuple[list[int], int]:
        """The prefix ids of a prompt whose text tokens are `body` (the template and special tokens around it, as
        `encode` writes them) and the position where `body` starts: where an attack's slots go."""

    def encode_embeddings(self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor,
                          attention_mask: torch.Tensor) -> TokenConditioning:
        """The conditioning of prefixes given as input embeddings (with gradient): on a token generator the
        embeddings are the conditioning itself."""
        return TokenConditioning(inputs_embeds, attention_mask, input_ids)

    @abstractmethod
    def prompt_state(self, cond: TokenConditioning) -> torch.Tensor:
        """(B, 1, width): the transformer's last hidden state over the prefix, at the begin-of-image token, from
        which the first code is drawn: the model's reading of the prompt (what Ring-A-Bell matches, in place of a
        text encoder's output)."""

    @property
    @abstractmethod
    def num_image_tokens(self) -> int:
        """Codes per image (the grid's cells)."""

    @property
    @abstractmethod
    def codebook_size(self) -> int:
        """Distinct codes of the VQ tokenizer."""

    @abstractmethod
    def encode(self, prompts: list[str]) -> TokenConditioning:
        """The prefixes of `prompts`, as the model is prompted for an image (template, special tokens)."""

    @abstractmethod
    def unconditional(self, cond: TokenConditioning) -> TokenConditioning:
        """The prefixes classifier-free guidance contrasts `cond` with."""

    @abstractmethod
    def image_logits(self, cond: TokenConditioning, codes: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, N, codebook) of every code of `codes` (B, N) given the prefix and the codes
        before it; with gradient, for training and for attacks."""

    @abstractmethod
    def sample(self, cond: TokenConditioning, generators: list[torch.Generator], guidance: float = 5.0,
               temperature: float = 1.0) -> torch.Tensor:
        """Codes (B, N) drawn one at a time with classifier-free guidance; row i draws from `generators[i]`, so an
        image depends on its seed and prompt only."""

    def sample_seeds(self, cond: TokenConditioning, seeds: list[int], guidance: float = 5.0) -> torch.Tensor:
        """`sample` with row i drawn from a fresh generator seeded `seeds[i]`."""
        return self.sample(cond, [torch.Generator().manual_seed(int(s)) for s in seeds], guidance)

    @abstractmethod
    def expected_latents(self, logits: torch.Tensor) -> torch.Tensor:
        """The decoder's latent grid (B, d, h, w) under code distributions (B, N, codebook): Σ_v p(v) e_v at every
        cell, e_v the codebook's vectors. A differentiable image-space reading of the logits (SCORE's
        discriminator reads it in place of a diffusion model's clean estimate)."""

    @abstractmethod
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Images (B, H, W, 3) in [0, 1] from codes (B, N)."""

    @abstractmethod
    def image_codes(self, images: torch.Tensor) -> torch.Tensor:
        """The codes (B, N) of images (B, H, W, 3) in [0, 1]: the targets of teacher-forced losses."""

    def code_log_probs(self, cond: TokenConditioning, codes: torch.Tensor) -> torch.Tensor:
        """log p(r_i | r_<i, prefix) of every code (B, N), teacher-forced: what preference losses (VCE's DPO)
        average and compare."""
        logits = self.image_logits(cond, codes).float()
        return torch.log_softmax(logits, -1).gather(-1, codes.unsqueeze(-1)).squeeze(-1)

    def parameters(self, group: str) -> dict[str, nn.Parameter]:
        """Named parameters of `network` in a group: `attention`, `ffn`, both (`attention+ffn`, S-VARE's
        choice) or `full`."""
        named = dict(self.network.named_parameters())
        if group == "full":
            return named
        patterns = {"attention": [self.ATTENTION], "ffn": [self.FFN], "attention+ffn": [self.ATTENTION, self.FFN]}
        if group not in patterns:
            raise ValueError(f"unknown parameter group '{group}'; choose one of {', '.join(TOKEN_PARAMETER_GROUPS)}")
        return {n: p for n, p in named.items() if any(re.search(r, n) for r in patterns[group])}

    def pipeline_inputs(self, guidance: float, prompts: list[str] | None = None,
                        cond: TokenConditioning | None = None) -> dict:
        """Keyword arguments for the pipeline's `__call__` (as `Denoiser.pipeline_inputs`)."""
        inputs = {"prompt": list(prompts)} if cond is None else {"prompt_embeds": cond}
        return {**inputs, "guidance_scale": guidance}


class PrefixPrompting(TokenGenerator):
    """A generator prompted as `<bos> template(prompt) <boi>` in its own input-embedding table (`network.
    get_input_embeddings()`), its pipeline's config naming the template and the special tokens: Janus, and the
    next-scale generator of `backends.var`."""

    def encode(self, prompts: list[str]) -> TokenConditioning:
        config, tokenizer = self.pipe.config, self.pipe.tokenizer
        ids = [[config.bos_token_id, *tokenizer(config.template.format(prompt=p), add_special_tokens=False).input_ids,
                config.boi_token_id] for p in prompts]
        width = max(len(row) for row in ids)
        input_ids = torch.tensor([[config.pad_token_id] * (width - len(row)) + row for row in ids], device=self.device)
        mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in ids], device=self.device)
        with torch.no_grad():
            embeds = self.network.get_input_embeddings()(input_ids)
        return TokenConditioning(embeds, mask, input_ids)

    def frame(self, body: list[int]) -> tuple[list[int], int]:
        """[BOS] template-before body template-after [BOI]; the template's pieces are tokenised apart from the body,
        which for a byte-pair tokenizer may split the boundary words differently from `encode`'s whole string."""
        config, tokenizer = self.pipe.config, self.pipe.tokenizer
        before, after = config.template.split("{prompt}")
        head = [config.bos_token_id, *(tokenizer(before, add_special_tokens=False).input_ids if before else [])]
        tail = [*(tokenizer(after, add_special_tokens=False).input_ids if after else []), config.boi_token_id]
        return head + list(body) + tail, len(head)

    def unconditional(self, cond: TokenConditioning) -> TokenConditioning:
        """Janus's rule: every prefix position but BOS and BOI becomes the pad token."""
        config = self.pipe.config
        keep = (cond.input_ids == config.bos_token_id) | (cond.input_ids == config.boi_token_id)
        input_ids = torch.where(keep, cond.input_ids, torch.full_like(cond.input_ids, config.pad_token_id))
        with torch.no_grad():  # as `encode`: a conditioning, not a path for gradients into the embedding table
            embeds = self.network.get_input_embeddings()(input_ids).to(cond.embeds.dtype)
        return TokenConditioning(embeds, cond.mask, input_ids)


class LanguageModelGenerator(PrefixPrompting):
    """A decoder-only language model that writes an image as a sequence after its prompt, one token at a time
    with a KV cache: the sequence holds the codes, and may hold fixed tokens between them (Emu3's end of row).
    Subclasses say where the language model and its code head are and how codes become sequence tokens."""

    @property
    def network(self) -> nn.Module:
        return self._frozen if self._frozen is not None else self.pipe.model

    @property
    def model(self):
        return self.network

    @property
    @abstractmethod
    def language_model(self) -> nn.Module:
        """The transformer over prompt and image tokens (input embeddings in, hidden states out)."""

    @abstractmethod
    def code_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Code logits (..., codebook) from hidden states that predict a code."""

    @abstractmethod
    def token_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """Input embeddings of sequence tokens (B, T) (`sequence`'s ids)."""

    def code_tokens(self, codes: torch.Tensor) -> torch.Tensor:
        """The sequence token of each code (any shape): the code itself unless the codes are words (Emu3)."""
        return codes

    def sequence(self, codes: torch.Tensor) -> torch.Tensor:
        """The sequence tokens (B, T) of codes (B, N): their tokens, unless a subclass lays them out."""
        return self.code_tokens(codes)

    @property
    @abstractmethod
    def side(self) -> int:
        """The code grid's side."""

    @property
    @abstractmethod
    def codebook(self) -> torch.Tensor:
        """The code vectors (V, d) the decoder reads."""

    def _grid(self, vectors: torch.Tensor) -> torch.Tensor:
        return vectors.transpose(1, 2).reshape(len(vectors), -1, self.side, self.side)

    def expected_latents(self, logits: torch.Tensor) -> torch.Tensor:
        return self._grid(torch.softmax(logits.float(), -1) @ self.codebook.float())  # Σ_v p(v) e_v per cell

    def code_slots(self) -> torch.Tensor:
        """(T,) bool: which sequence positions hold a code (the others hold `sequence`'s fixed tokens)."""
        return torch.ones(self.num_image_tokens, dtype=torch.bool)

    def prompt_state(self, cond: TokenConditioning) -> torch.Tensor:
        positions = (cond.mask.cumsum(-1) - 1).clamp(min=0)
        return self._run(cond.embeds, cond.mask, positions)[:, -1:]

    def _run(self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache=None):
        out = self.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, cache=cache,
                                  use_cache=cache is not None)
        return out.last_hidden_state

    def image_logits(self, cond: TokenConditioning, codes: torch.Tensor) -> torch.Tensor:
        tokens = self.sequence(codes)[:, :-1]
        embeds = torch.cat([cond.embeds, self.token_embeddings(tokens).to(cond.embeds.dtype)], 1)
        mask = torch.cat([cond.mask, torch.ones_like(tokens)], 1)
        hidden = self._run(embeds, mask, (mask.cumsum(-1) - 1).clamp(min=0))
        return self.code_logits(hidden[:, cond.embeds.shape[1] - 1:][:, self.code_slots().to(hidden.device)])

    @torch.no_grad()
    def sample(self, cond: TokenConditioning, generators: list[torch.Generator], guidance: float = 5.0,
               temperature: float = 1.0) -> torch.Tensor:
        from transformers import DynamicCache

        both = self.unconditional(cond)
        embeds, mask = torch.cat([cond.embeds, both.embeds]), torch.cat([cond.mask, both.mask])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache, n, slots = DynamicCache(), len(cond), self.code_slots().tolist()
        codes = torch.zeros(n, self.num_image_tokens, dtype=torch.long, device=self.device)
        fixed = self.sequence(codes)  # the fixed tokens in their places (the codes' places are overwritten)
        drawn_so_far = 0
        for j, is_code in enumerate(slots):
            hidden = self._run(embeds, mask, positions, cache)[:, -1]
            token = fixed[:, j]
            if is_code:
                logits = self.code_logits(hidden).float()
                logits = logits[n:] + guidance * (logits[:n] - logits[n:])  # classifier-free guidance on the logits
                probs = torch.softmax(logits / max(temperature, 1e-6), -1).cpu()
                drawn = [torch.multinomial(p, 1, generator=g)[0] for p, g in zip(probs, generators, strict=True)]
                codes[:, drawn_so_far] = torch.stack(drawn)
                token = self.code_tokens(codes[:, drawn_so_far])
                drawn_so_far += 1
            if j + 1 == len(slots):
                break
            embeds = self.token_embeddings(torch.cat([token, token]).unsqueeze(-1)).to(embeds.dtype)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            positions = positions[:, -1:] + 1
        return codes


class JanusGenerator(LanguageModelGenerator):
    """transformers' Janus classes (Janus, Janus-Pro): a Llama language model reads the prompt, a generation head
    gives the image-code logits, the generation embeddings feed each drawn code back in, and a VQ-VAE decodes."""

    family = "janus"
    network_attr = "model"  # the pipeline attribute a delta's tensors are named under
    ATTENTION = r"language_model\.layers\.\d+\.self_attn\."
    FFN = r"language_model\.layers\.\d+\.mlp\."

    @property
    def language_model(self) -> nn.Module:
        return self.model.model.language_model

    def code_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.model.generation_head(hidden)

    def token_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.prepare_embeddings_for_image_generation(tokens)

    @property
    def num_image_tokens(self) -> int:
        return self.side ** 2  # the decoder's square grid

    @property
    def codebook_size(self) -> int:
        return self.model.model.vqmodel.config.num_embeddings

    @property
    def codebook(self) -> torch.Tensor:
        """The code vectors (V, d) the decoder reads. Janus's tokenizer (LlamaGen's, `codebook_l2_norm`) snaps and
        decodes unit-length vectors; transformers' decoding normalises but its encoding does not, so both are done
        here, by the pipeline's `l2_codes` (False for embedded-ar, whose VQ-VAE was trained on raw vectors)."""
        weight = self.model.model.vqmodel.quantize.embedding.weight
        return F.normalize(weight, dim=-1) if self.pipe.config.get("l2_codes", True) else weight

    @property
    def side(self) -> int:
        return self.model.model.vqmodel.config.num_patches

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        vq = self.model.model.vqmodel
        with torch.no_grad():
            pixels = vq.decoder(vq.post_quant_conv(self._grid(self.codebook[codes])))
        return ((pixels.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)

    def image_codes(self, images: torch.Tensor) -> torch.Tensor:
        vq = self.model.model.vqmodel
        pixels = (images.permute(0, 3, 1, 2) * 2 - 1).to(self.device, self.model.dtype)
        with torch.no_grad():
            z = vq.quant_conv(vq.encoder(pixels)).flatten(2).transpose(1, 2).float()  # (B, N, d)
            if self.pipe.config.get("l2_codes", True):
                z = F.normalize(z, dim=-1)
            return torch.cdist(z, self.codebook.float()[None]).argmin(-1)
