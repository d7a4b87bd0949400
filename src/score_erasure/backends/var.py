"""A next-scale (VAR-style) autoregressive generator, written here: no package ships VAR, Infinity or HART.

VAR (Tian et al., NeurIPS 2024) draws an image coarse to fine: a multi-scale residual quantiser writes the
tokenizer's latent grid f as K code maps r_1..r_K of growing sides s_1 < ... < s_K (here 1, 2, 4, 8),

    f_hat = Σ_k φ_k(up(e[r_k]))      r_k = Q(down(f − Σ_{j<k} φ_j(up(e[r_j])), s_k))

with one codebook e shared by all scales, and a transformer predicts every code of scale k at once from the prompt
and the scales before it (block-causal attention). Scale k's input tokens are the partial sum f_hat_{<k}
resized to s_k × s_k; scale 1's code comes from the begin-of-image token. Ten scales up to 16 × 16 in VAR; four
up to the world's 8 × 8 grid here.

Our reading (docs/embedded-model.md): φ_k is a 3x3 convolution added to its input (VAR mixes x and conv(x) half
and half), zero at initialisation so that a tokenizer trained for one scale starts as a residual quantiser of it;
the encoder, decoder and codebook are those of Janus's VQ-VAE (transformers' classes); the prompt is a prefix of
word pieces embedded by the transformer itself, as in the embedded Janus model, so that attacks optimise it the
same way; codes are drawn with plain temperature and constant classifier-free guidance (VAR ramps guidance with
the scale and filters with top-k/top-p).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn
from transformers.models.janus.configuration_janus import JanusVQVAEConfig
from transformers.models.janus.modeling_janus import JanusVQVAE

from score_erasure.backends.tokens import PrefixPrompting, TokenConditioning
from score_erasure.errors import UserError


def _cells(scales: tuple[int, ...]) -> list[int]:
    return [s * s for s in scales]


class MultiScaleVQ(ModelMixin, ConfigMixin):
    """VAR's tokenizer: Janus's VQ-VAE (encoder, one codebook, decoder) with a residual quantiser over `scales`.
    Codes of an image are (B, Σ s_k²), coarsest scale first, each scale's map in raster order."""

    @register_to_config
    def __init__(self, vq_config: dict, scales: tuple[int, ...] = (1, 2, 4, 8)):
        super().__init__()
        self.vq = JanusVQVAE(JanusVQVAEConfig(**vq_config))
        dim = self.vq.config.embed_dim
        self.phi = nn.ModuleList(nn.Conv2d(dim, dim, 3, padding=1) for _ in scales)
        for conv in self.phi:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    @property
    def side(self) -> int:
        return self.config.scales[-1]

    @property
    def codebook(self) -> torch.Tensor:
        return self.vq.quantize.embedding.weight

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """f: the encoder's latent grid (B, d, side, side) of images in [-1, 1]."""
        return self.vq.quant_conv(self.vq.encoder(pixels))

    def scale_term(self, k: int, vectors: torch.Tensor) -> torch.Tensor:
        """φ_k(up(·)) of scale k's code vectors (B, d, s_k, s_k): its term of f_hat."""
        up = F.interpolate(vectors, size=(self.side,) * 2, mode="bicubic") if vectors.shape[-1] < self.side else vectors
        return up + self.phi[k](up)

    def vectors(self, codes: torch.Tensor) -> torch.Tensor:
        """Codebook vectors of one scale's codes (B, s²) as a map (B, d, s, s)."""
        side = int(round(codes.shape[1] ** 0.5))
        return self.codebook[codes].transpose(1, 2).reshape(len(codes), -1, side, side)

    def quantize(self, f: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The codes (B, N) of latents f and the partial sums f_hat after each scale (each (B, d, side, side))."""
        rest, f_hat, codes, partial = f, torch.zeros_like(f), [], []
        for k, s in enumerate(self.config.scales):
            z = F.interpolate(rest, size=(s, s), mode="area") if s < self.side else rest
            flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
            r = torch.cdist(flat, self.codebook.detach()).argmin(-1).view(len(f), s * s)  # a choice: no gradient
            term = self.scale_term(k, self.vectors(r))
            f_hat, rest = f_hat + term, rest - term
            codes.append(r)
            partial.append(f_hat)
        return torch.cat(codes, 1), partial

    def split(self, codes: torch.Tensor) -> list[torch.Tensor]:
        return list(codes.split(_cells(self.config.scales), 1))

    def latents(self, codes: torch.Tensor) -> torch.Tensor:
        """f_hat of codes (B, N)."""
        return sum(self.scale_term(k, self.vectors(r)) for k, r in enumerate(self.split(codes)))

    def next_inputs(self, f_hat: torch.Tensor, k: int) -> torch.Tensor:
        """Scale k's input tokens (B, s_k², d): the partial sum of the scales before it, resized to s_k × s_k."""
        s = self.config.scales[k]
        z = F.interpolate(f_hat, size=(s, s), mode="area") if s < self.side else f_hat
        return z.flatten(2).transpose(1, 2)

    def teacher_inputs(self, codes: torch.Tensor) -> torch.Tensor:
        """The input tokens of scales 2..K (B, N − 1, d) for codes (B, N): what the transformer reads when it is
        told every scale before the one it predicts."""
        f_hat, inputs = 0, []
        for k, r in enumerate(self.split(codes)[:-1]):
            f_hat = f_hat + self.scale_term(k, self.vectors(r))
            inputs.append(self.next_inputs(f_hat, k + 1))
        return torch.cat(inputs, 1)

    def decode_latents(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] (B, 3, H, W)."""
        return self.vq.decoder(self.vq.post_quant_conv(f_hat))


class RMSNorm(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, 1e-6)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.out = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])
        return self.out(y.transpose(1, 2).flatten(2))


class FeedForward(nn.Module):
    """SwiGLU, as Llama's."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(width, hidden, bias=False)
        self.up = nn.Linear(width, hidden, bias=False)
        self.down = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int):
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(width), Attention(width, heads)
        self.mlp_norm, self.mlp = RMSNorm(width), FeedForward(width, hidden)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), allowed)
        return x + self.mlp(self.mlp_norm(x))


class NextScaleTransformer(ModelMixin, ConfigMixin):
    """The block-causal transformer: a prompt prefix (causal, left-padded) then the input tokens of scales 2..K;
    a token of scale k attends to the prefix and to every token of scales up to k. The output at the prefix's last
    (begin-of-image) token gives scale 1's code, the outputs at scale k's inputs give scale k's codes."""

    @register_to_config
    def __init__(self, vocab_size: int, codebook_size: int, code_dim: int, scales: tuple[int, ...] = (1, 2, 4, 8),
                 width: int = 256, layers: int = 6, heads: int = 8, ffn: int = 704, max_prompt_tokens: int = 64):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab_size, width)
        self.prompt_positions = nn.Embedding(max_prompt_tokens, width)
        self.code_in = nn.Linear(code_dim, width)
        self.image_positions = nn.Parameter(torch.randn(sum(_cells(scales)[1:]), width) * 0.02)
        self.levels = nn.Embedding(len(scales), width)
        self.blocks = nn.ModuleList(Block(width, heads, ffn) for _ in range(layers))
        self.norm = RMSNorm(width)
        self.head = nn.Linear(width, codebook_size)
        level = torch.cat([torch.full((n,), k) for k, n in enumerate(_cells(scales)) if k > 0])
        self.register_buffer("image_levels", level, persistent=False)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def image_embeddings(self, inputs: torch.Tensor) -> torch.Tensor:
        """Input tokens (B, M, d) of the first M image positions (scales 2.., in order) as embeddings."""
        m = inputs.shape[1]
        return (self.code_in(inputs.to(self.code_in.weight.dtype)) + self.image_positions[:m]
                + self.levels(self.image_levels[:m]))

    def forward(self, prefix: torch.Tensor, mask: torch.Tensor, inputs: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states (B, L + M, width) of a prefix's embeddings (B, L, width) with mask (B, L) and image input
        tokens (B, M, d)."""
        longest = int(mask.sum(-1).max())
        if longest > self.config.max_prompt_tokens:  # learned positions: none beyond those trained
            raise UserError(f"this next-scale model reads prompts of at most {self.config.max_prompt_tokens} tokens "
                            f"(its special tokens and any attack slots included); this one has {longest}")
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        x = prefix + self.prompt_positions(positions)
        length, m = prefix.shape[1], 0 if inputs is None else inputs.shape[1]
        if m:
            x = torch.cat([x, self.image_embeddings(inputs).to(x.dtype)], 1)
        level = torch.cat([torch.zeros(length, dtype=torch.long, device=x.device), self.image_levels[:m]])
        index = torch.arange(length + m, device=x.device)
        # a prefix token sees the prefix before it; an image token the whole prefix and the scales up to its own
        allowed = (level[None, :] <= level[:, None]) & ((index[None, :] <= index[:, None]) | (level[:, None] > 0))
        valid = torch.cat([mask.bool(), torch.ones(len(mask), m, dtype=torch.bool, device=x.device)], 1)
        allowed = (allowed[None] & valid[:, None, :]) | torch.eye(length + m, dtype=torch.bool, device=x.device)
        for block in self.blocks:
            x = block(x, allowed)
        return self.norm(x)

    def logits(self, hidden: torch.Tensor, length: int) -> torch.Tensor:
        """Code logits of every image position from the hidden states of a prefix of `length` tokens."""
        return self.head(hidden[:, length - 1:])


class VARGenerator(PrefixPrompting):
    """The token backend of a VARImagePipeline (`transformer`: NextScaleTransformer, `vq`: MultiScaleVQ)."""

    family = "var"
    network_attr = "transformer"
    ATTENTION = r"blocks\.\d+\.attn\."
    FFN = r"blocks\.\d+\.mlp\."

    @property
    def network(self) -> nn.Module:
        return self._frozen if self._frozen is not None else self.pipe.transformer

    @property
    def vq(self) -> MultiScaleVQ:
        return self.pipe.vq

    @property
    def num_image_tokens(self) -> int:
        return sum(_cells(self.vq.config.scales))

    @property
    def codebook_size(self) -> int:
        return self.vq.config.vq_config["num_embeddings"]

    def prompt_state(self, cond: TokenConditioning) -> torch.Tensor:
        return self.network(cond.embeds, cond.mask)[:, -1:]

    def image_logits(self, cond: TokenConditioning, codes: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            inputs = self.vq.teacher_inputs(codes)
        hidden = self.network(cond.embeds, cond.mask, inputs)
        return self.network.logits(hidden, cond.embeds.shape[1])

    @torch.no_grad()
    def sample(self, cond: TokenConditioning, generators: list[torch.Generator], guidance: float = 5.0,
               temperature: float = 1.0) -> torch.Tensor:
        """Scale by scale, every code of a scale at once (4 passes for 85 codes)."""
        both = TokenConditioning.cat([cond, self.unconditional(cond)])
        n, length, scales = len(cond), cond.embeds.shape[1], self.vq.config.scales
        codes, inputs, f_hat = [], None, 0
        for k, cells in enumerate(_cells(scales)):
            hidden = self.network(both.embeds, both.mask, None if inputs is None else torch.cat([inputs] * 2))
            logits = self.network.logits(hidden, length)[:, -cells:].float()
            logits = logits[n:] + guidance * (logits[:n] - logits[n:])
            probs = torch.softmax(logits / max(temperature, 1e-6), -1).cpu()
            r = torch.stack([torch.multinomial(p, 1, generator=g)[:, 0]
                             for p, g in zip(probs, generators, strict=True)])
            codes.append(r.to(self.device))
            if k + 1 < len(scales):
                f_hat = f_hat + self.vq.scale_term(k, self.vq.vectors(codes[-1]))
                step = self.vq.next_inputs(f_hat, k + 1)
                inputs = step if inputs is None else torch.cat([inputs, step], 1)
        return torch.cat(codes, 1)

    def expected_latents(self, logits: torch.Tensor) -> torch.Tensor:
        """Σ_k φ_k(up(Σ_v p(v) e_v)) over the scales: f_hat under the code distributions."""
        vectors = torch.softmax(logits.float(), -1) @ self.vq.codebook.float()  # (B, N, d)
        return sum(self.vq.scale_term(k, part.transpose(1, 2).reshape(len(logits), -1, s, s))
                   for k, (s, part) in enumerate(zip(self.vq.config.scales,
                                                     vectors.split(_cells(self.vq.config.scales), 1), strict=True)))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return ((self.vq.decode_latents(self.vq.latents(codes)).float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)

    def image_codes(self, images: torch.Tensor) -> torch.Tensor:
        pixels = (images.permute(0, 3, 1, 2) * 2 - 1).to(self.device, self.vq.dtype)
        with torch.no_grad():
            return self.vq.quantize(self.vq.features(pixels))[0]
