"""Emu3 (transformers' `Emu3ForConditionalGeneration`) on the token backend.

Emu3 writes an image in its language model's own vocabulary: each code of its VQ tokenizer is a word
(`<|visual token 000123|>`), the grid is written row by row with an end-of-line word after each row, and the
prompt ends `<|image start|>{h}*{w}<|image token|>` (the grid's size in codes, as text). The backend keeps the
codes as the grid (B, h·w) that methods and attacks see, lays them out with the end-of-line words for the language
model (`sequence`, `code_slots`), and reads a code's logits from the language head's rows of the visual words
only. Its tokenizer (a spatial VQ-VAE over a repeated frame) snaps and decodes raw code vectors."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from score_erasure.backends.tokens import LanguageModelGenerator, TokenConditioning


class Emu3Generator(LanguageModelGenerator):
    """The token backend of an Emu3ImagePipeline (`model`: Emu3ForConditionalGeneration; its config's
    `grid_size` is the image's side in codes)."""

    family = "emu3"
    network_attr = "model"
    ATTENTION = r"text_model\.layers\.\d+\.self_attn\."
    FFN = r"text_model\.layers\.\d+\.mlp\."

    @property
    def language_model(self) -> nn.Module:
        return self.model.model.text_model

    @property
    def side(self) -> int:
        return self.pipe.config.grid_size

    @property
    def vq(self) -> nn.Module:
        return self.model.model.vqmodel

    @property
    def num_image_tokens(self) -> int:
        return self.side ** 2

    @property
    def codebook_size(self) -> int:
        return self.vq.config.codebook_size

    @property
    def visual_words(self) -> torch.Tensor:
        """(codebook,) the vocabulary id of each code."""
        return self.model.model.vocabulary_mapping.img2bpe_mapping_tensor.long().to(self.device)

    def code_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.model.lm_head.weight[self.visual_words])

    def token_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.network.get_input_embeddings()(tokens)

    def code_tokens(self, codes: torch.Tensor) -> torch.Tensor:
        return self.visual_words[codes]

    def sequence(self, codes: torch.Tensor) -> torch.Tensor:
        rows = self.code_tokens(codes).view(len(codes), self.side, self.side)
        eol = torch.full_like(rows[:, :, :1], self.model.model.vocabulary_mapping.eol_token_id)
        return torch.cat([rows, eol], -1).flatten(1)

    def code_slots(self) -> torch.Tensor:
        return (torch.arange(self.side * (self.side + 1)) % (self.side + 1)) != self.side

    def unconditional(self, cond: TokenConditioning) -> TokenConditioning:
        """The template with the caption's words padded out (our reading: Emu3's own guidance contrasts a
        negative prompt, which a caption-free prefix stands for; the grid size and special words stay)."""
        ids, head = self.frame([])
        tail = len(ids) - head
        real = cond.mask.bool()
        index = real.cumsum(-1) - 1  # position among the real (unpadded) tokens
        length = real.sum(-1, keepdim=True)
        body = real & (index >= head) & (index < length - tail)
        input_ids = torch.where(body, torch.full_like(cond.input_ids, self.pipe.config.pad_token_id), cond.input_ids)
        with torch.no_grad():
            embeds = self.network.get_input_embeddings()(input_ids).to(cond.embeds.dtype)
        return TokenConditioning(embeds, cond.mask, input_ids)

    @property
    def codebook(self) -> torch.Tensor:
        return self.vq.quantize.embedding.weight  # raw vectors: Emu3's quantiser does not normalise

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            pixels = self.vq.decode(codes.view(len(codes), self.side, self.side))
        return ((pixels.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)

    def image_codes(self, images: torch.Tensor) -> torch.Tensor:
        pixels = (images.permute(0, 3, 1, 2) * 2 - 1).to(self.device, self.model.dtype)
        sizes = torch.tensor([pixels.shape[-2:]] * len(pixels))
        with torch.no_grad():
            return torch.stack(self.vq.encode(pixels, sizes).image_tokens).flatten(1)
