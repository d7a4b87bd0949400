"""Tiny random-weight pipelines built from configs, offline: the stand-ins for real checkpoints in tests.

Same seed, same weights. They exercise every code path that a real SD checkpoint takes, in milliseconds.
"""

from __future__ import annotations

import torch


def tiny_sd_pipeline(seed: int = 0, latent_size: int = 8, prediction_type: str = "epsilon"):
    """A StableDiffusionPipeline: tiny BERT encoder (the MiniLM tokenizer, offline), a UNet on 8x8 latents
    with cross-attention, a 3-level VAE making 32x32 images (which the world judge reads)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import BertConfig, BertModel, BertTokenizer

    from score_erasure.toyworld.model import minilm_path

    torch.manual_seed(seed)
    tokenizer = BertTokenizer.from_pretrained(minilm_path(), model_max_length=16)
    encoder = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                                   num_attention_heads=2, intermediate_size=32, max_position_embeddings=32),
                        add_pooling_layer=False).eval()
    unet = UNet2DConditionModel(sample_size=latent_size, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                                cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 8, 8), layers_per_block=1,
                        latent_channels=4, norm_num_groups=4, sample_size=32)
    scheduler = DDIMScheduler(steps_offset=1, clip_sample=False, prediction_type=prediction_type)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def small_protocol_data(task: str, concept: str, per_group: int = 2, seeds: int = 2, steps: int = 2) -> dict:
    """A packaged protocol cut down to one concept, a few prompts per group, few seeds and steps."""
    import json

    from score_erasure.evaluation.protocol import packaged_path

    data = json.loads(packaged_path(task).read_text())
    c = data["concepts"][concept]
    data["concepts"] = {concept: {"detect": c["detect"], **{g: c[g][:per_group] for g in ("target", "generality",
                                                                                            "retained")}}}
    data["neutral"] = data["neutral"][: per_group + 2]
    data["seeds"] = list(range(seeds))
    data["sampling"]["steps"] = steps
    data["bootstrap"]["resamples"] = 100
    return data


_FAST_SCORE = dict(iterations=2, steps=4, d_pretrain=2, saliency_seeds=(1, 2), saliency_prompts=1,
                   saliency_iterations=1, bank_per_prompt=1, adv_ramp=1)
#: Config overrides that make every method finish in seconds on a tiny pipeline (smoke runs, tests).
FAST_CONFIGS: dict[str, dict] = {"score": _FAST_SCORE, "ant": _FAST_SCORE,
                                 "score-robust": {**_FAST_SCORE, "attack_every": 1, "attack_iterations": 1},
                                 "esd-x": dict(iterations=2, steps=4),
                                 "esd-u": dict(iterations=2, steps=4), "uce": {}}
#: Attack budgets that run in about a second per prompt on a tiny pipeline (its text encoder reads 16 tokens).
FAST_ATTACK_CONFIGS: dict[str, dict] = {
    "unlearndiff": dict(iterations=3, target_images=1, batch=1, select_every=2),
    "p4d": dict(n_tokens=4, iterations=3, target_images=1, batch=1, select_every=2),
    "ring-a-bell": dict(n_tokens=4, population=6, generations=3),
    "inversion": dict(iterations=3, target_images=1, batch=1),
    "paraphrase": {},
}
