"""Denoiser for SDXL (StableDiffusionXLPipeline): the SD backend plus what SDXL adds.

- Two text encoders: the token states are the two encoders' penultimate layers side by side (768 + 1280 on
  SDXL), and the second encoder's projected output is a pooled vector; `encode` packs both into one
  conditioning (`pack_pooled`), as the FLUX backend does.
- Added time ids (original size, crop, target size) enter with the pooled vector: fixed at the pipeline's
  default resolution, as the pipeline sets them.
- The unconditional branch is zeros, not the encoded empty prompt, when the pipeline says so
  (`force_zeros_for_empty_prompt`, SDXL's default), so the Denoiser samples what the pipeline samples.
- Attacks optimise the first encoder's input embeddings; the second encoder's half of the states and the
  pooled vector follow the decoded text, without gradient.
"""

from __future__ import annotations

import torch

from score_erasure.backends.base import PooledConditioning, encode_with_input_embeddings, pack_pooled
from score_erasure.backends.sd import SDDenoiser


class SDXLDenoiser(PooledConditioning, SDDenoiser, family="sdxl"):
    def __init__(self, pipe, network=None):
        super().__init__(pipe, network)
        self.states_width = self.network.config.cross_attention_dim
        self.pooled_width = pipe.text_encoder_2.config.projection_dim
        side = self.network.config.sample_size * pipe.vae_scale_factor
        self.time_ids = pipe._get_add_time_ids((side, side), (0, 0), (side, side), torch.float32,
                                               text_encoder_projection_dim=self.pooled_width)


    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        states, _, pooled, _ = self.pipe.encode_prompt(list(prompts), device=self.device,
                                                       do_classifier_free_guidance=False)
        return pack_pooled(states, pooled)

    def unconditional(self, n: int = 1) -> torch.Tensor:
        if self.pipe.config.force_zeros_for_empty_prompt:
            return torch.zeros_like(self.encode([""])).expand(n, -1, -1)
        return self.encode([""] * n)

    def encode_embeddings(self, input_ids, inputs_embeds, attention_mask=None):
        out = encode_with_input_embeddings(self.pipe.text_encoder, input_ids, inputs_embeds, layer=-2)
        first = out.hidden_states[-2]
        with torch.no_grad():
            rest = self.encode(self.tokenizer.batch_decode(input_ids, skip_special_tokens=True))
        states, pooled = self.unpack(rest)
        states = torch.cat([first.to(states.dtype), states[..., first.shape[-1]:]], -1)
        return pack_pooled(states, pooled)

    def pipeline_inputs(self, guidance, prompts=None, cond=None):
        if cond is None:
            return {"prompt": list(prompts), "guidance_scale": guidance}
        states, pooled = self.unpack(cond)
        return {"prompt_embeds": states, "pooled_prompt_embeds": pooled, "guidance_scale": guidance}

    def recondition(self, network_kwargs, cond):
        states, pooled = self.unpack(cond)
        added = {**network_kwargs.get("added_cond_kwargs", {}), "text_embeds": pooled}
        return {**network_kwargs, "encoder_hidden_states": states, "added_cond_kwargs": added}

    def conditioning(self, network_kwargs):
        return pack_pooled(network_kwargs["encoder_hidden_states"], network_kwargs["added_cond_kwargs"]["text_embeds"])

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        states, pooled = self.unpack(cond)
        t = torch.as_tensor(t, device=x_t.device).reshape(-1).expand(len(x_t))
        dtype = self.network.dtype
        added = {"text_embeds": pooled.to(dtype), "time_ids": self.time_ids.to(x_t.device, dtype).expand(len(x_t), -1)}
        return self.network(x_t.to(dtype), t, encoder_hidden_states=states.to(dtype),
                            added_cond_kwargs=added).sample.to(x_t.dtype)
