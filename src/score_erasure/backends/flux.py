"""Denoiser for FLUX-architecture models (diffusers FluxTransformer2DModel in a FluxPipeline).

Rectified flow: x_t = (1 - sigma) x0 + sigma eps with sigma = t / 1000; the network predicts the velocity
v = eps - x0, so the clean estimate is x0_hat = x_t - sigma v. Sampling is FluxPipeline's: Euler steps on
sigmas linspace(1, 1/K, K), shifted by mu from the image's token count.

What the interface hides:
- latents: methods see (B, C, H, W); the transformer's 2x2-packed token sequence exists only inside `predict`;
- conditioning: FLUX reads token states AND a pooled vector; `encode` returns both as one tensor
  (B, L + 1, W), the pooled vector as a last token zero-padded to the width W of the wider of the two, so
  methods can concatenate, index and repeat conditionings as they do on SD;
- guidance: a guidance-distilled model (`guidance_embeds`) gets the guidance scale as an input and has no
  true unconditional branch: the empty prompt at the same guidance stands in (as EraseAnything does);
  `predict` uses `self.guidance`. A model without the embedding samples with true classifier-free guidance;
- "cross-attention": the text-stream projections of the double-stream blocks (`add_{q,k,v}_proj`,
  `to_add_out`, their norms), the only weights that read text alone; single-stream blocks mix both streams;
- what reads the conditioning itself (`inputs`): the text stream's input projection (`context_embedder`, token
  states) and the pooled vector's (`time_text_embed.text_embedder.linear_1`, which modulates every block).
"""

from __future__ import annotations

import numpy as np
import torch

from score_erasure.backends.base import (
    Denoiser,
    PooledConditioning,
    encode_with_input_embeddings,
    masked_mean,
    pack_pooled,
    resolution,
)
from score_erasure.errors import UserError

DEFAULT_DISTILLED_GUIDANCE = 3.5  # FLUX.1-dev's default


class FluxDenoiser(PooledConditioning, Denoiser, family="flux", network_attr="transformer"):
    XATTN_KV = r"(^|\.)transformer_blocks\.\d+\.attn\.add_[kv]_proj\."
    XATTN = r"(^|\.)transformer_blocks\.\d+\.attn\.(add_[qkv]_proj|to_add_out|norm_added_[qk])\."
    IMAGE_ATTN = r"(^|\.)attn\.(to_[qkv]|to_out\.0|norm_[qk])\."

    def __init__(self, pipe, network=None):
        super().__init__(pipe, network)
        config = self.network.config
        self.distilled = bool(config.guidance_embeds)
        self.guidance = DEFAULT_DISTILLED_GUIDANCE  # the embedded guidance of `predict` on a distilled model
        self.states_width, self.pooled_width = config.joint_attention_dim, config.pooled_projection_dim
        self.single_encoder = getattr(pipe, "text_encoder_2", None) is None
        self.max_sequence_length = 512 if self.single_encoder else pipe.tokenizer_2.model_max_length

    # --- prompts -------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        return self.pipe.tokenizer if self.single_encoder else self.pipe.tokenizer_2  # T5 carries the prompt

    @property
    def text_encoder(self):
        return self.pipe.text_encoder if self.single_encoder else self.pipe.text_encoder_2

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        states, pooled, _ = self.pipe.encode_prompt(list(prompts), device=self.device,
                                                    max_sequence_length=self.max_sequence_length)
        return pack_pooled(states, pooled)

    def encode_embeddings(self, input_ids, inputs_embeds, attention_mask=None):
        """Token states with gradient through `inputs_embeds`. With one encoder the pooled vector is their masked
        mean (gradient too); with CLIP + T5 it is CLIP's, of the decoded text, without gradient."""
        encoder = self.text_encoder
        if self.single_encoder:
            mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
            states = encode_with_input_embeddings(encoder, input_ids, inputs_embeds, mask)
            pooled = masked_mean(states, mask.to(states.device))
        else:  # FluxPipeline runs T5 without a mask
            states = encode_with_input_embeddings(encoder, input_ids, inputs_embeds)
            text = self.tokenizer.batch_decode(input_ids, skip_special_tokens=True)
            with torch.no_grad():
                pooled = self.pipe._get_clip_prompt_embeds(text, device=self.device)
        dtype = self.network.dtype
        return pack_pooled(states.to(dtype), pooled.to(dtype))

    def pipeline_inputs(self, guidance, prompts=None, cond=None):
        inputs = {"max_sequence_length": self.max_sequence_length}  # also for the empty negative prompt
        if cond is None:
            inputs["prompt"] = list(prompts)
        else:
            inputs["prompt_embeds"], inputs["pooled_prompt_embeds"] = self.unpack(cond)
        if self.distilled:
            return {**inputs, "guidance_scale": guidance}
        count = len(prompts) if cond is None else len(cond)
        return {**inputs, "true_cfg_scale": guidance, "negative_prompt": [""] * count}

    def recondition(self, network_kwargs, cond):
        states, pooled = self.unpack(cond)
        txt_ids = torch.zeros(states.shape[1], 3, device=states.device, dtype=states.dtype)
        return {**network_kwargs, "encoder_hidden_states": states, "pooled_projections": pooled, "txt_ids": txt_ids}

    def conditioning(self, network_kwargs):
        return pack_pooled(network_kwargs["encoder_hidden_states"], network_kwargs["pooled_projections"])

    # --- one network evaluation -----------------------------------------------------------------
    def _velocity(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, guidance: float) -> torch.Tensor:
        from diffusers import FluxPipeline  # its static packing helpers

        b, c, h, w = x_t.shape
        dtype = self.network.dtype  # a frozen copy may run in lower precision than the caller
        states, pooled = (part.to(dtype) for part in self.unpack(cond))
        t = torch.as_tensor(t, device=x_t.device).reshape(-1).expand(b).to(dtype)
        v = self.network(
            hidden_states=FluxPipeline._pack_latents(x_t.to(dtype), b, c, h, w),
            timestep=t / 1000,
            guidance=torch.full((b,), float(guidance), device=x_t.device) if self.distilled else None,
            pooled_projections=pooled,
            encoder_hidden_states=states,
            txt_ids=torch.zeros(states.shape[1], 3, device=x_t.device, dtype=dtype),
            img_ids=FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x_t.device, dtype),
            return_dict=False,
        )[0]
        scale = self.pipe.vae_scale_factor
        return FluxPipeline._unpack_latents(v, h * scale, w * scale, scale).to(x_t.dtype)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self._velocity(x_t, t, cond, self.guidance)

    def _sigma(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return (torch.as_tensor(t).reshape(-1, 1, 1, 1).to(like) / 1000)

    def add_noise(self, x0, noise, t):
        sigma = self._sigma(t, x0)
        return (1 - sigma) * x0 + sigma * noise

    def target(self, x0, noise, t):
        return noise - x0

    def clean_estimate(self, x_t, t, pred):
        return x_t - self._sigma(t, x_t) * pred

    # --- sampling ---------------------------------------------------------------------------------
    def latent_size(self) -> int:
        side, _ = resolution(self.pipe)
        return 2 * (side // (self.pipe.vae_scale_factor * 2))

    def _scheduler(self, steps: int):
        """FluxPipeline's schedule: sigmas linspace(1, 1/K, K), shifted by mu from the image's token count."""
        from diffusers import FlowMatchEulerDiscreteScheduler
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        if steps < 1:
            raise UserError(f"steps must be at least 1 (got {steps})")
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.pipe.scheduler.config)
        config = scheduler.config
        tokens = (self.latent_size() // 2) ** 2
        mu = calculate_shift(tokens, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                             config.get("base_shift", 0.5), config.get("max_shift", 1.15))
        sigmas = np.linspace(1.0, 1 / steps, steps)
        scheduler.set_timesteps(sigmas=sigmas, mu=mu if config.use_dynamic_shifting else None)
        return scheduler

    def timesteps(self, steps: int) -> torch.Tensor:
        return self._scheduler(steps).timesteps

    def conditioning_readers(self) -> dict[str, str]:
        return {"context_embedder.weight": "states", "time_text_embed.text_embedder.linear_1.weight": "pooled"}

    def noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        size = self.latent_size()
        shape = (n, self.network.config.in_channels // 4, size, size)
        return torch.randn(shape, generator=generator).to(self.device, self.network.dtype)

    @torch.no_grad()
    def sample(self, cond, steps, until=None, guidance=3.0, generator=None, x=None, start=0):
        scheduler = self._scheduler(steps)
        scheduler.set_begin_index(start)
        x = self.noise(len(cond), generator) if x is None else x
        uncond = None if self.distilled else self.unconditional(len(cond))
        for t in scheduler.timesteps[start:until]:
            if self.distilled:
                v = self._velocity(x, t, cond, guidance)
            else:
                v_uncond, v_cond = self.predict(torch.cat([x, x]), t, torch.cat([uncond, cond])).chunk(2)
                v = v_uncond + guidance * (v_cond - v_uncond)
            x = scheduler.step(v, t, x).prev_sample
        return x

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        shift = vae.config.shift_factor or 0.0
        return ((vae.decode(x0 / vae.config.scaling_factor + shift).sample + 1) / 2).clamp(0, 1)
