"""Pipeline classes this toolkit adds to diffusers.

`SingleEncoderFluxPipeline`: FLUX's architecture (rectified-flow transformer with joint text-image
attention) driven by ONE text encoder of any BERT-like kind, where FluxPipeline insists on CLIP for the
pooled vector and T5 for the token states. The encoder's token states are the text stream and their
masked mean (the sentence embedding all-MiniLM-L6-v2 was trained to produce) is the pooled vector. Everything
else (packing, the shifted sigma schedule, the guidance embedding, decoding) is FluxPipeline's own code.
Saved folders record this class in model_index.json; the model resolver (`models`) loads them.

`JanusImagePipeline`: an autoregressive generator of transformers' Janus family (Janus, Janus-Pro) as a
diffusers pipeline, so that generation, the image cache, deltas and saved folders treat it as any other model;
what it draws comes from the token backend (`backends.tokens.JanusGenerator`). `VARImagePipeline` and
`Emu3ImagePipeline` do the same for the next-scale generator of `backends.var` and for transformers' Emu3.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
)
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

from score_erasure.backends.base import masked_mean
from score_erasure.backends.emu3 import Emu3Generator
from score_erasure.backends.tokens import JanusGenerator, TokenConditioning
from score_erasure.backends.var import MultiScaleVQ, NextScaleTransformer, VARGenerator


class SingleEncoderFluxPipeline(FluxPipeline):
    """FluxPipeline with one BERT-like text encoder (see the module docstring).

    A transformer trained without a guidance embedding (`guidance_embeds=False`) needs true classifier-free
    guidance: call it with `true_cfg_scale` and `negative_prompt=""`, as `generate` does."""

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _optional_components: list[str] = []

    def __init__(self, scheduler: FlowMatchEulerDiscreteScheduler, vae: AutoencoderKL, text_encoder,
                 tokenizer, transformer: FluxTransformer2DModel, default_sample_size: int | None = None):
        DiffusionPipeline.__init__(self)
        self.register_modules(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                              transformer=transformer)
        self.register_to_config(default_sample_size=default_sample_size)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor * 2)
        self.tokenizer_max_length = self.tokenizer.model_max_length
        # FluxPipeline's 128 means 1024-pixel images; a small model sets its own latent size.
        self.default_sample_size = default_sample_size or 128

    # FluxPipeline reads these; a single encoder has no second one.
    text_encoder_2 = None
    tokenizer_2 = None
    image_encoder = None
    feature_extractor = None

    def tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer_max_length,
                              truncation=True, return_tensors="pt")

    def encode_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(token states, pooled vector) from token ids; the states carry gradient if the encoder does."""
        device = self.text_encoder.device
        states = self.text_encoder(input_ids.to(device), attention_mask=attention_mask.to(device))[0]
        return states, masked_mean(states, attention_mask.to(device))

    def encode_prompt(self, prompt, prompt_2=None, device=None, num_images_per_prompt: int = 1,
                      prompt_embeds=None, pooled_prompt_embeds=None, max_sequence_length: int = 512,
                      lora_scale=None):
        """FluxPipeline's contract: (token states, pooled vector, text position ids)."""
        device = device or self._execution_device
        if prompt_embeds is None:
            prompt = [prompt] if isinstance(prompt, str) else list(prompt)
            tokens = self.tokenize(prompt)
            with torch.no_grad():
                prompt_embeds, pooled_prompt_embeds = self.encode_states(tokens.input_ids, tokens.attention_mask)
        elif pooled_prompt_embeds is None:
            raise ValueError("prompt_embeds without pooled_prompt_embeds: pass both (FluxPipeline's rule)")
        dtype = self.transformer.dtype
        prompt_embeds = prompt_embeds.to(device, dtype).repeat_interleave(num_images_per_prompt, 0)
        pooled_prompt_embeds = pooled_prompt_embeds.to(device, dtype).repeat_interleave(num_images_per_prompt, 0)
        text_ids = torch.zeros(prompt_embeds.shape[1], 3, device=device, dtype=dtype)
        return prompt_embeds, pooled_prompt_embeds, text_ids


class TokenImagePipeline(DiffusionPipeline):
    """What an autoregressive pipeline shares: prompted as `<bos> template(prompt) <boi>` (its config names the
    template and special tokens), its images drawn by its `token_backend` class (backends.token_generator_of).

    `num_inference_steps` is accepted and ignored: the generator's own steps are its code positions or scales."""

    token_backend: type

    def _prompted(self, template: str, bos_token_id: int, boi_token_id: int, pad_token_id: int, **modules) -> None:
        """Register the modules and the prompt format (diffusers reads each subclass's own `__init__` signature to
        load a folder, so each keeps one)."""
        self.register_modules(**modules)
        self.register_to_config(template=template, bos_token_id=bos_token_id, boi_token_id=boi_token_id,
                                pad_token_id=pad_token_id)

    @torch.no_grad()
    def __call__(self, prompt: list[str] | str | None = None, prompt_embeds: TokenConditioning | None = None,
                 guidance_scale: float = 5.0, generator: list[torch.Generator] | torch.Generator | None = None,
                 num_inference_steps: int | None = None, temperature: float = 1.0, output_type: str = "np"):
        generator_ = self.token_backend(self)
        cond = generator_.encode([prompt] if isinstance(prompt, str) else list(prompt)) \
            if prompt_embeds is None else prompt_embeds
        generators = generator if isinstance(generator, list) else [generator or torch.Generator()] * len(cond)
        images = generator_.decode(generator_.sample(cond, generators, guidance_scale, temperature)).cpu()
        return ImagePipelineOutput(images=images.numpy() if output_type == "np" else self.numpy_to_pil(images.numpy()))


class JanusImagePipeline(TokenImagePipeline):
    """A Janus model (`JanusForConditionalGeneration`) and its tokenizer, prompted for images as
    `<bos> template(prompt) <boi>`; `template` is "{prompt}" for a model trained on bare captions (the embedded
    world's) and the chat turn for Janus-Pro (`from_janus`). `l2_codes`: whether its tokenizer snaps and decodes
    unit-length code vectors (Janus's own, LlamaGen's `codebook_l2_norm`) or raw ones (embedded-ar's, trained so)."""

    token_backend = JanusGenerator  # what draws its images (backends.token_generator_of)

    def __init__(self, model, tokenizer, template: str = "{prompt}", bos_token_id: int = 1, boi_token_id: int = 2,
                 pad_token_id: int = 0, l2_codes: bool = True):
        super().__init__()
        self._prompted(template, bos_token_id, boi_token_id, pad_token_id, model=model, tokenizer=tokenizer)
        self.register_to_config(l2_codes=l2_codes)

    @classmethod
    def from_janus(cls, name: str, dtype: torch.dtype | None = None) -> JanusImagePipeline:
        """A transformers Janus checkpoint (hub id or folder, as `JanusForConditionalGeneration.save_pretrained`
        writes it), with the special tokens and the chat turn its generation config and tokenizer name."""
        from transformers import AutoTokenizer, JanusForConditionalGeneration
        from transformers.utils import cached_file

        model = JanusForConditionalGeneration.from_pretrained(name, dtype=dtype, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(name)
        # the BOI token is in generation_config.json's generation_kwargs, which GenerationConfig does not keep
        found = cached_file(name, "generation_config.json", _raise_exceptions_for_missing_entries=False)
        extra = json.loads(Path(found).read_text()).get("generation_kwargs") or {} if found else {}
        template = "<|User|>: {prompt}\n\n<|Assistant|>:" if "<|User|>" in tokenizer.get_vocab() else "{prompt}"
        return cls(model.eval(), tokenizer, template, bos_token_id=model.generation_config.bos_token_id,
                   boi_token_id=extra.get("boi_token_id", tokenizer.convert_tokens_to_ids("<begin_of_image>")),
                   pad_token_id=model.generation_config.pad_token_id or tokenizer.pad_token_id or 0)

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of its images: the code grid times the VQ decoder's upsampling."""
        vq = self.model.config.vq_config
        side = vq.num_patches * 2 ** (len(vq.channel_multiplier) - 1)
        return side, side


class VARImagePipeline(TokenImagePipeline):
    """The next-scale generator of `backends.var`: its transformer, its multi-scale tokenizer and a tokenizer of
    words (`embedded-var`: MiniLM's word pieces, the prompt bare)."""

    token_backend = VARGenerator

    def __init__(self, transformer: NextScaleTransformer, vq: MultiScaleVQ, tokenizer, template: str = "{prompt}",
                 bos_token_id: int = 1, boi_token_id: int = 2, pad_token_id: int = 0):
        super().__init__()
        self._prompted(template, bos_token_id, boi_token_id, pad_token_id, transformer=transformer, vq=vq,
                       tokenizer=tokenizer)

    @property
    def image_size(self) -> tuple[int, int]:
        vq = self.vq.config.vq_config
        side = self.vq.side * 2 ** (len(vq["channel_multiplier"]) - 1)
        return side, side


class Emu3ImagePipeline(TokenImagePipeline):
    """An Emu3 model (`Emu3ForConditionalGeneration`) and its tokenizer, prompted for a `grid_size`² grid of codes
    as `<bos> prompt <|image start|>{grid}*{grid} <|image token|>`, as Emu3's processor prompts it."""

    token_backend = Emu3Generator

    def __init__(self, model, tokenizer, template: str = "{prompt}", bos_token_id: int = 1, boi_token_id: int = 2,
                 pad_token_id: int = 0, grid_size: int = 8):
        super().__init__()
        self._prompted(template, bos_token_id, boi_token_id, pad_token_id, model=model, tokenizer=tokenizer)
        self.register_to_config(grid_size=grid_size)

    @classmethod
    def from_emu3(cls, name: str, dtype: torch.dtype | None = None, image_size: int = 720) -> Emu3ImagePipeline:
        """A transformers Emu3 checkpoint (hub id or folder), drawing square images of `image_size` pixels (Emu3's
        processor's default area is 720²)."""
        from transformers import AutoTokenizer, Emu3ForConditionalGeneration

        model = Emu3ForConditionalGeneration.from_pretrained(name, dtype=dtype, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(name)
        return cls.for_model(model.eval(), tokenizer, image_size)

    @classmethod
    def for_model(cls, model, tokenizer, image_size: int) -> Emu3ImagePipeline:
        """The pipeline of a loaded model and tokenizer; the special words are Emu3's."""
        grid = image_size // model.model.vqmodel.spatial_scale_factor
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return cls(model, tokenizer, "{prompt}<|image start|>" + f"{grid}*{grid}", bos_token_id=bos,
                   boi_token_id=tokenizer.get_vocab()["<|image token|>"], pad_token_id=pad, grid_size=grid)

    @property
    def image_size(self) -> tuple[int, int]:
        side = self.config.grid_size * self.model.model.vqmodel.spatial_scale_factor
        return side, side
