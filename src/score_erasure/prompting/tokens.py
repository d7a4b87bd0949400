"""Prompts as token sequences with slots for optimised tokens, for any tokenizer (WordPiece, BPE).

A `TokenPrompt` is what the text encoder reads: ids and attention mask padded as the pipeline pads them (on a
token generator, the unpadded prompt prefix: `TokenGenerator.frame`),
plus the positions (`slots`) an attack writes. A slot holds either a vocabulary token (discrete attacks:
the ids themselves change) or a free vector (inversion: `vectors` replace the slot's embedding). Its
conditioning is `Denoiser.encode_embeddings`, so without slots it equals `Denoiser.encode(prompt)`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from score_erasure.backends.tokens import TokenGenerator
from score_erasure.errors import UserError

# Slot ids before an attack fills them; an ordinary word, so that CLIP's end-token search never lands on one.
PLACEHOLDER_TEXT = "x"
_NOT_WORDS = re.compile(r"^\[unused\d+\]$|^<\|.*\|>$|^\[[A-Z]+\]$")


def table(denoiser) -> nn.Embedding:
    """The text encoder's input-embedding table (vocabulary x width)."""
    return denoiser.text_encoder.get_input_embeddings()


def text_ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False).input_ids) if text.strip() else []


@dataclass(frozen=True)
class TokenPrompt:
    ids: torch.Tensor  # (1, L) long
    mask: torch.Tensor  # (1, L) long, 1 on real tokens
    slots: torch.Tensor  # (k,) long, positions an attack writes

    def with_tokens(self, token_ids: torch.Tensor) -> TokenPrompt:
        """The same prompt with vocabulary tokens `token_ids` (k,) in its slots."""
        ids = self.ids.clone()
        ids[0, self.slots] = token_ids.to(ids)
        return replace(self, ids=ids)

    def embeds(self, denoiser, vectors: torch.Tensor | None = None) -> torch.Tensor:
        """Input embeddings (1, L, width); rows at the slots replaced by `vectors` (k, width) when given."""
        looked_up = table(denoiser)(self.ids)
        if vectors is None:
            return looked_up
        keep = torch.ones(self.ids.shape[1], 1, dtype=looked_up.dtype)
        keep[self.slots] = 0
        placed = torch.zeros_like(looked_up[0]).index_copy(0, self.slots, vectors.to(looked_up))
        return looked_up * keep + placed

    def condition(self, denoiser, vectors: torch.Tensor | None = None) -> torch.Tensor:
        """The conditioning (1, L, D), with gradient to `vectors`."""
        return denoiser.encode_embeddings(self.ids, self.embeds(denoiser, vectors), self.mask)

    def text(self, tokenizer) -> str:
        """The prompt as text (slots as their current tokens)."""
        return tokenizer.decode(self.ids[0, self.mask[0].bool()].tolist(), skip_special_tokens=True).strip()

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"ids": self.ids, "mask": self.mask, "slots": self.slots}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> TokenPrompt:
        return cls(tensors["ids"].long(), tensors["mask"].long(), tensors["slots"].long())


def token_prompt(denoiser, parts: Sequence[str | int | list[int]]) -> TokenPrompt:
    """Text pieces, slot counts and token-id lists, in order: [3, "a picture of a star"] puts 3 slots before
    the prompt.

    Special tokens and padding follow the tokenizer, as the pipeline's own tokenisation does."""
    tokenizer = denoiser.tokenizer
    placeholder = text_ids(tokenizer, PLACEHOLDER_TEXT)[0]
    body: list[int] = []
    slots: list[int] = []
    for part in parts:
        if isinstance(part, int):
            slots += range(len(body), len(body) + part)
            body += [placeholder] * part
        else:
            body += text_ids(tokenizer, part) if isinstance(part, str) else list(part)
    if isinstance(denoiser, TokenGenerator):  # a prefix: template and special tokens, no padding
        ids, offset = denoiser.frame(body)
        return TokenPrompt(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long),
                           torch.tensor([offset + s for s in slots], dtype=torch.long))
    # The special tokens the tokenizer puts around any text ([CLS] ... [SEP], <|startoftext|> ... <|endoftext|>)
    around = list(tokenizer(PLACEHOLDER_TEXT).input_ids)
    offset = around.index(placeholder)
    ids = around[:offset] + body + around[offset + 1:]
    length = tokenizer.model_max_length
    if len(ids) > length:
        words = tokenizer.decode(body)
        raise UserError(f"'{words}' needs {len(ids)} tokens but the text encoder reads {length}; optimise fewer "
                        "tokens (the attack's n_tokens)")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else ids[-1]
    mask = [1] * len(ids) + [0] * (length - len(ids))
    ids = ids + [pad] * (length - len(ids))
    return TokenPrompt(torch.tensor([ids]), torch.tensor([mask]), torch.tensor([offset + s for s in slots],
                                                                                 dtype=torch.long))


# Prompts that hold a learned word alone (Pham et al.'s concept inversion): no concept word in any of them.
WORD_TEMPLATES = ("a {token}", "a picture of a {token}", "a photo of a {token}", "an image of a {token}")


def template_prompt(denoiser, template: str, prompt: str, n_tokens: int) -> TokenPrompt:
    """`template` with n_tokens slots at {token} and `prompt` at {prompt} (if it has one)."""
    before, after = template.replace("{prompt}", prompt).split("{token}")
    return token_prompt(denoiser, [before, n_tokens, after])


class Vocabulary:
    """The tokens an attack may place (every token but special and unused ones) and their input embeddings."""

    def __init__(self, denoiser):
        tokenizer = denoiser.tokenizer
        size = min(len(tokenizer), table(denoiser).num_embeddings)
        names = tokenizer.convert_ids_to_tokens(list(range(size)))
        special = set(tokenizer.all_special_ids)
        self.ids = torch.tensor([i for i, name in enumerate(names) if i not in special and not _NOT_WORDS.match(name)])
        self.embeddings = table(denoiser).weight[self.ids].detach()  # (V, width)
        self._unit = F.normalize(self.embeddings, dim=-1)

    def __len__(self) -> int:
        return len(self.ids)

    def random(self, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
        return self.ids[torch.randint(len(self.ids), shape, generator=gen)]

    def nearest(self, vectors: torch.Tensor) -> torch.Tensor:
        """PEZ's projection: for each vector (k, width), the token whose embedding is most cosine-similar."""
        return self.ids[(F.normalize(vectors.detach(), dim=-1) @ self._unit.T).argmax(-1)]


def prompt_text(denoiser, prompt: TokenPrompt) -> str:
    """What a user would type to give `prompt`: its text, without a token generator's frame (the template and
    special words that `encode` puts around every prompt; Emu3's grid size, say, is text)."""
    if not isinstance(denoiser, TokenGenerator):
        return prompt.text(denoiser.tokenizer)
    ids, head = denoiser.frame([])
    real = prompt.ids[0, prompt.mask[0].bool()]
    body = real[head:len(real) - (len(ids) - head)]
    return denoiser.tokenizer.decode(body.tolist(), skip_special_tokens=True).strip()


def exact_text(denoiser, prompt: TokenPrompt) -> bool:
    """Whether the decoded text tokenises back to the same ids (so the text alone reproduces the attack)."""
    tokenizer = denoiser.tokenizer
    if isinstance(denoiser, TokenGenerator):
        return bool(torch.equal(denoiser.encode([prompt_text(denoiser, prompt)]).input_ids, prompt.ids))
    again = tokenizer(prompt.text(tokenizer), padding="max_length", max_length=tokenizer.model_max_length,
                      truncation=True, return_tensors="pt").input_ids
    return bool(torch.equal(again, prompt.ids))
