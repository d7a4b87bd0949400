"""Tiny random-weight pipelines built from configs, offline: the stand-ins for real checkpoints in tests.

Same seed, same weights. They exercise every code path that a real SD checkpoint takes, in milliseconds.
"""

from __future__ import annotations

import json
import sys

import torch

from score_erasure import cli
from score_erasure.attacks import ATTACKS
from score_erasure.backends.var import MultiScaleVQ, NextScaleTransformer
from score_erasure.delta import editable_parameters
from score_erasure.evaluation.protocol import packaged_path
from score_erasure.methods import METHODS
from score_erasure.pipelines import Emu3ImagePipeline, JanusImagePipeline, SingleEncoderFluxPipeline, VARImagePipeline
from score_erasure.toyworld.model import minilm_path


def snapshot_changes(denoiser, method, run) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The parameters `method` may edit (network and, where it trains one, the text encoder) before `run()`, and
    the names, as a delta names them, of those that `run()` changed."""
    editable = (denoiser.pipe, denoiser.network_attr, method.components(denoiser))
    before = {k: v.detach().clone() for k, v in editable_parameters(*editable).items()}
    run()
    return before, {k for k, v in editable_parameters(*editable).items() if not torch.equal(v, before[k])}


def tiny_sd_pipeline(seed: int = 0, latent_size: int = 8, prediction_type: str = "epsilon"):
    """A StableDiffusionPipeline: tiny BERT encoder (the MiniLM tokenizer, offline), a UNet on 8x8 latents
    with cross-attention, a 3-level VAE making 32x32 images (which the world judge reads)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import BertTokenizer

    torch.manual_seed(seed)
    tokenizer = BertTokenizer.from_pretrained(minilm_path(), model_max_length=16)
    encoder = _tiny_bert(tokenizer)
    unet = UNet2DConditionModel(sample_size=latent_size, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                                cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4)
    vae = tiny_vae()
    scheduler = DDIMScheduler(steps_offset=1, clip_sample=False, prediction_type=prediction_type)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _tiny_clip(tokenizer, projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=32, projection_dim=16,
                            bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def tiny_sdxl_pipeline(seed: int = 0):
    """A StableDiffusionXLPipeline: two tiny CLIP text encoders (the second with a projection: the pooled
    vector), a UNet with SDXL's added text/time embedding, the tiny VAE; DDIM, so that the Denoiser's sampler
    and the pipeline's agree. The MiniLM word-piece tokenizer stands in for both CLIP tokenizers, offline."""
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import BertTokenizer

    torch.manual_seed(seed)
    tokenizer = BertTokenizer.from_pretrained(minilm_path(), model_max_length=16)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
                                cross_attention_dim=32, attention_head_dim=2, norm_num_groups=4,
                                addition_embed_type="text_time", addition_time_embed_dim=4,
                                projection_class_embeddings_input_dim=16 + 6 * 4, use_linear_projection=True)
    pipe = StableDiffusionXLPipeline(vae=tiny_vae(), text_encoder=_tiny_clip(tokenizer), tokenizer=tokenizer,
                                     text_encoder_2=_tiny_clip(tokenizer, projection=True), tokenizer_2=tokenizer,
                                     unet=unet, scheduler=DDIMScheduler(steps_offset=1, clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_vae(shift_factor: float | None = None):
    """A 3-level VAE making 32x32 images (which the world judge reads) from 8x8x4 latents."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                         up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 8, 8), layers_per_block=1,
                         latent_channels=4, norm_num_groups=4, sample_size=32, shift_factor=shift_factor)


def _tiny_bert(tokenizer, width: int = 16):
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=width, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=2 * width, max_position_embeddings=32),
                     add_pooling_layer=False).eval()


def tiny_flux_pipeline(seed: int = 0, guidance_embeds: bool = False, encoders: str = "single"):
    """A FLUX-architecture pipeline on 8x8x4 latents (16 packed tokens). `encoders="single"`: our
    SingleEncoderFluxPipeline with a tiny BERT; `"clip+t5"`: diffusers' own FluxPipeline with tiny random
    CLIPTextModel and T5EncoderModel (the MiniLM word-piece tokenizer stands in for both tokenizers, offline).
    `guidance_embeds=True` builds a guidance-distilled model, as FLUX.1-dev."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import BertTokenizer, CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                         pooled_projection_dim=16, guidance_embeds=guidance_embeds,
                                         axes_dims_rope=(2, 2, 4))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    tokenizer = BertTokenizer.from_pretrained(minilm_path(), model_max_length=16)
    if encoders == "single":
        pipe = SingleEncoderFluxPipeline(scheduler=scheduler, vae=tiny_vae(0.0), text_encoder=_tiny_bert(tokenizer),
                                         tokenizer=tokenizer, transformer=transformer, default_sample_size=8)
    elif encoders == "clip+t5":
        clip = CLIPTextModel(CLIPTextConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, intermediate_size=32,
                                            num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=32,
                                            projection_dim=16, bos_token_id=tokenizer.cls_token_id,
                                            eos_token_id=tokenizer.sep_token_id,
                                            pad_token_id=tokenizer.pad_token_id)).eval()
        t5 = T5EncoderModel(T5Config(vocab_size=tokenizer.vocab_size, d_model=16, d_ff=32, d_kv=8, num_layers=1,
                                     num_heads=2)).eval()
        pipe = FluxPipeline(scheduler=scheduler, vae=tiny_vae(0.0), text_encoder=clip, tokenizer=tokenizer,
                            text_encoder_2=t5, tokenizer_2=tokenizer, transformer=transformer)
        pipe.default_sample_size = 8  # 32-pixel images, as the single-encoder pipeline
    else:
        raise ValueError(f"encoders must be 'single' or 'clip+t5', not {encoders!r}")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_janus_pipeline(seed: int = 0) -> JanusImagePipeline:
    """A JanusImagePipeline at toy scale: a 2-layer Llama of width 64 over the MiniLM word-piece vocabulary
    (offline), an 8x8 grid of 64 codes, a VQ-VAE decoding them to 32x32 images (which the world judge reads);
    about 3M parameters. [CLS], [SEP] and [PAD] stand in for Janus's BOS, BOI and pad tokens."""
    from transformers import BertTokenizer, JanusConfig, JanusForConditionalGeneration

    torch.manual_seed(seed)
    tokenizer = BertTokenizer.from_pretrained(minilm_path(), model_max_length=32)
    config = JanusConfig(
        text_config={"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": tokenizer.vocab_size,
                     "max_position_embeddings": 128},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 4, "projection_dim": 64, "num_image_tokens": 64},
        vq_config={"embed_dim": 8, "num_embeddings": 64, "base_channels": 32, "channel_multiplier": [1, 1, 2],
                   "num_res_blocks": 1, "latent_channels": 8, "resolution": 32, "attn_resolutions": [],
                   "projection_dim": 64, "image_token_embed_dim": 64, "num_patches": 8},
        image_token_id=tokenizer.unk_token_id)
    model = JanusForConditionalGeneration(config).eval()
    pipe = JanusImagePipeline(model, tokenizer, bos_token_id=tokenizer.cls_token_id,
                              boi_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_emu3_pipeline(seed: int = 0) -> Emu3ImagePipeline:
    """An Emu3ImagePipeline at toy scale: a 2-layer Emu3 language model of width 64 over the MiniLM word pieces
    (offline) plus Emu3's special words (64 visual words, end of line, image start, image token), an 8x8 grid of
    a 64-code book, Emu3's VQ-VAE decoding it to 32x32 images; about 5M parameters. [CLS] stands in for BOS."""
    from transformers import BertTokenizer, Emu3Config, Emu3ForConditionalGeneration

    torch.manual_seed(seed)
    tokenizer = BertTokenizer.from_pretrained(minilm_path(), model_max_length=32)
    visual = [f"<|visual token {i:06d}|>" for i in range(64)]
    tokenizer.add_special_tokens({"additional_special_tokens": [*visual, "<|extra_200|>", "<|image start|>",
                                                                "<|image token|>"]})
    vocab = tokenizer.get_vocab()
    config = Emu3Config(
        vq_config={"codebook_size": 64, "embed_dim": 8, "latent_channels": 8, "base_channels": 32,
                   "channel_multiplier": [1, 1, 2], "num_res_blocks": 1, "attn_resolutions": [],
                   "temporal_downsample_factor": 4, "hidden_size": 64},
        text_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "num_key_value_heads": 4, "vocab_size": len(tokenizer), "max_position_embeddings": 256,
                     "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.cls_token_id,
                     "eos_token_id": tokenizer.sep_token_id},
        vocabulary_map={word: vocab[word] for word in [*visual, "<|extra_200|>"]})
    pipe = Emu3ImagePipeline.for_model(Emu3ForConditionalGeneration(config).eval(), tokenizer, image_size=32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_var_pipeline(seed: int = 0) -> VARImagePipeline:
    """A VARImagePipeline at toy scale: scales 1, 2, 4, 8 (85 codes of a 64-code book) over tiny_janus_pipeline's
    VQ-VAE architecture, a 2-layer block-causal transformer of width 64 over the MiniLM word pieces (offline)."""
    from transformers import BertTokenizer

    torch.manual_seed(seed)
    tokenizer = BertTokenizer.from_pretrained(minilm_path(), model_max_length=32)
    vq = MultiScaleVQ(vq_config={"embed_dim": 8, "num_embeddings": 64, "base_channels": 32,
                                 "channel_multiplier": [1, 1, 2], "num_res_blocks": 1, "latent_channels": 8,
                                 "resolution": 32, "attn_resolutions": [], "num_patches": 8}, scales=(1, 2, 4, 8))
    for conv in vq.phi:  # random, as every other weight here, so that tests see each scale's term
        torch.nn.init.normal_(conv.weight, std=0.05)
    transformer = NextScaleTransformer(vocab_size=tokenizer.vocab_size, codebook_size=64, code_dim=8, width=64,
                                       layers=2, heads=4, ffn=128, max_prompt_tokens=34)
    pipe = VARImagePipeline(transformer.eval(), vq.eval(), tokenizer, bos_token_id=tokenizer.cls_token_id,
                            boi_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_cli(capsys, monkeypatch, *args) -> tuple[int, str, str]:
    """Run the `score` command in-process as a user would (argv, exit code, stdout, stderr), for tests."""
    import pytest  # a test-time dependency: only tests call this

    monkeypatch.setattr(sys, "argv", ["score", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def small_protocol_data(task: str, concept: str, per_group: int = 2, seeds: int = 2, steps: int = 2) -> dict:
    """A packaged protocol cut down to one concept, a few prompts per group, few seeds and steps."""
    data = json.loads(packaged_path(task).read_text())
    c = data["concepts"][concept]
    groups = ("target", "generality", "retained", "context", "lookalike")
    data["concepts"] = {concept: {"detect": c["detect"], **{g: c[g][:per_group] for g in groups if g in c}}}
    data["neutral"] = data["neutral"][: per_group + 2]
    data["seeds"] = list(range(seeds))
    if "floor_seeds" in data:
        data["floor_seeds"] = data["floor_seeds"][:seeds]
    data["sampling"]["steps"] = steps
    data["bootstrap"]["resamples"] = 100
    return data


#: Config overrides that make every method finish in seconds on a tiny pipeline: each registry entry's `smoke`.
FAST_CONFIGS: dict[str, dict] = {name: method.smoke for name, method in METHODS.items()}
#: Attack budgets that run in about a second per prompt on a tiny pipeline (its text encoder reads 16 tokens).
FAST_ATTACK_CONFIGS: dict[str, dict] = {name: attack.smoke for name, attack in ATTACKS.items()}
