"""Denoiser for the Stable Diffusion family (UNet2DConditionModel): SD1.x (epsilon), SD2.x (v) and the
embedded model (v). Cross-attention is `attn2` in every transformer block."""

from __future__ import annotations

import torch

from score_erasure.backends.base import Denoiser, encode_with_input_embeddings


class SDDenoiser(Denoiser, family="sd", network_attr="unet"):
    XATTN_KV = r"attn2\.to_[kv]\."
    XATTN = r"attn2\."
    IMAGE_ATTN = r"attn1\.|attn2\.to_q\."

    def __init__(self, pipe, network=None):
        super().__init__(pipe, network)
        from diffusers import DDIMScheduler

        # Methods and attacks sample with DDIM whatever scheduler the pipeline ships (as ESD does).
        self.scheduler_config = DDIMScheduler.from_config(pipe.scheduler.config).config
        self.alphas_cumprod = DDIMScheduler.from_config(self.scheduler_config).alphas_cumprod
        self.prediction_type = self.scheduler_config.prediction_type

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        embeds, _ = self.pipe.encode_prompt(list(prompts), self.device, 1, False)
        return embeds

    def encode_embeddings(self, input_ids, inputs_embeds, attention_mask=None):
        encoder = self.pipe.text_encoder
        use_mask = getattr(encoder.config, "use_attention_mask", False)  # as the pipeline's encode_prompt decides
        out = encode_with_input_embeddings(encoder, input_ids, inputs_embeds, attention_mask if use_mask else None)
        return out.to(encoder.dtype)  # as encode_prompt casts

    def pipeline_inputs(self, guidance, prompts=None, cond=None):
        inputs = {"prompt": list(prompts)} if cond is None else {"prompt_embeds": cond}
        return {**inputs, "guidance_scale": guidance}

    def recondition(self, network_kwargs, cond):
        return {**network_kwargs, "encoder_hidden_states": cond}

    def conditioning(self, network_kwargs):
        return network_kwargs["encoder_hidden_states"]

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=x_t.device).reshape(-1).expand(len(x_t))
        dtype = self.network.dtype
        return self.network(x_t.to(dtype), t, encoder_hidden_states=cond.to(dtype)).sample.to(x_t.dtype)

    def _alpha(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.alphas_cumprod[torch.as_tensor(t).reshape(-1).cpu()].reshape(-1, 1, 1, 1).to(like)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self._alpha(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            a = self._alpha(t, x0)
            return a.sqrt() * noise - (1 - a).sqrt() * x0
        return x0  # "sample"

    def clean_estimate(self, x_t: torch.Tensor, t: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        a = self._alpha(t, x_t)
        if self.prediction_type == "epsilon":
            return (x_t - (1 - a).sqrt() * pred) / a.sqrt()
        if self.prediction_type == "v_prediction":
            return a.sqrt() * x_t - (1 - a).sqrt() * pred
        return pred  # "sample"

    def _scheduler(self, steps: int):
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler.from_config(self.scheduler_config)
        scheduler.set_timesteps(steps)
        return scheduler

    def timesteps(self, steps: int) -> torch.Tensor:
        return self._scheduler(steps).timesteps

    def noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        size = self.network.config.sample_size
        shape = (n, self.network.config.in_channels, size, size)
        return torch.randn(shape, generator=generator).to(self.device)

    @torch.no_grad()
    def sample(self, cond, steps, until=None, guidance=3.0, generator=None, x=None, start=0):
        scheduler = self._scheduler(steps)
        x = self.noise(len(cond), generator) * scheduler.init_noise_sigma if x is None else x
        uncond = self.unconditional(len(cond))
        for t in scheduler.timesteps[start:until]:
            pred_uncond, pred_cond = self.predict(torch.cat([x, x]), t, torch.cat([uncond, cond])).chunk(2)
            x = scheduler.step(pred_uncond + guidance * (pred_cond - pred_uncond), t, x).prev_sample
        return x

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        return ((vae.decode(x0 / vae.config.scaling_factor).sample + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (N, 3, H, W) to clean latents, the VAE's mean: the inverse of `decode`."""
        vae = self.pipe.vae
        x = images.to(self.device, vae.dtype) * 2 - 1
        return vae.encode(x).latent_dist.mean * vae.config.scaling_factor
