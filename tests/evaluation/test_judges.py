"""Judges behind one interface: the world's CNN, NudeNet on a real photograph, CLIP from a tiny random model."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from score_erasure.errors import UserError
from score_erasure.evaluation.judges import ClipJudge, NudeNetJudge, TorchScriptFeatures, load_judge
from score_erasure.evaluation.protocol import Check, JudgeSpec
from score_erasure.toyworld import render

PHOTO = Path(__file__).parent / "data" / "astronaut.jpg"


def _scenes(*specs):
    rng = np.random.default_rng(0)
    return render.render_batch([render.sample_scene(rng, **spec) for spec in specs])


def test_world_judge_checks_every_condition():
    judge = load_judge(JudgeSpec(name="world"))
    images = _scenes(dict(shape="star", colour="blue", style="striped", fire=False),
                     dict(shape="circle", colour="red", style="solid", fire=True))
    assert judge.check(images, [Check(family="shape", value="star")]).tolist() == [True, False]
    assert judge.check(images, [Check(family="fire", value="fire")]).tolist() == [False, True]
    no_fire_star = [Check(family="shape", value="star"), Check(family="fire", value="fire", present=False)]
    assert judge.check(images, no_fire_star).tolist() == [True, False]
    assert judge.check(images, [Check(family="character", value="Zorblat")]).tolist() == [True, False]
    assert judge.features(images).shape == (2, 128)
    assert judge.describe()["weights_sha256"]


@pytest.mark.parametrize(("check", "message"), [(Check(family="size", value="big"), "cannot read 'size'"),
                                                 (Check(family="shape", value="hexagon"), "unknown shape 'hexagon'")])
def test_world_judge_rejects_what_it_cannot_read(check, message):
    with pytest.raises(UserError, match=message):
        load_judge(JudgeSpec(name="world")).check(_scenes(dict(shape="star")), [check])


def test_unknown_judge_and_bad_options():
    with pytest.raises(UserError, match="unknown judge 'q16'; choose one of: world, nudenet, clip"):
        load_judge(JudgeSpec(name="q16"))
    with pytest.raises(UserError, match="bad options for judge 'nudenet'"):
        load_judge(JudgeSpec(name="nudenet", options={"treshold": 0.5}))


def test_nudenet_on_a_real_photograph():
    """The astronaut photo: a face above threshold, no exposed part; settings recorded for the report."""
    photo = np.asarray(Image.open(PHOTO).convert("RGB"))[None]
    judge = load_judge(JudgeSpec(name="nudenet", options={"threshold": 0.6}))
    assert [d["class"] for d in judge.detections(photo)[0]] == ["FACE_FEMALE"]
    assert judge.check(photo, [Check(family="nudity", value="exposed")]).tolist() == [False]
    assert judge.check(photo, [Check(family="nudity", value="FACE_FEMALE")]).tolist() == [True]
    strict = NudeNetJudge(threshold=0.95)
    assert strict.check(photo, [Check(family="nudity", value="FACE_FEMALE")]).tolist() == [False]
    assert judge.describe()["threshold"] == 0.6 and "FEMALE_BREAST_EXPOSED" in judge.describe()["classes"]
    assert not judge.has_features
    counts = NudeNetJudge(classes=("FACE_FEMALE", "BELLY_EXPOSED")).class_counts(np.concatenate([photo, photo]))
    assert counts == {"FACE_FEMALE": 2, "BELLY_EXPOSED": 0}  # per-class image counts, as MACE reports on I2P


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    """A random-weight CLIPModel with a character-level BPE tokenizer, saved as a local directory."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    torch.manual_seed(0)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=64, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8)
    path = tmp_path_factory.mktemp("tiny-clip")
    CLIPModel(config).save_pretrained(path)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=CLIPTokenizer(vocab=vocab, merges=[]))
    processor.save_pretrained(path)
    return path


def test_clip_zero_shot_and_score(tiny_clip_dir):
    labels = {"object": ["star", "circle", "heart"]}
    judge = load_judge(JudgeSpec(name="clip", options={"model": str(tiny_clip_dir), "labels": labels}))
    images = _scenes(dict(shape="star"), dict(shape="circle"), dict(shape="heart"))
    got = [judge.check(images, [Check(family="object", value=label)]) for label in labels["object"]]
    assert np.stack(got).sum(0).tolist() == [1, 1, 1], "each image gets exactly one label of the family"
    scores = judge.clip_score(images, ["a star", "a circle", "a heart"])
    assert scores.shape == (3,) and ((scores >= 0) & (scores <= 100)).all()
    assert judge.features(images).shape == (3, 8)
    assert judge.describe()["labels"] == labels
    with pytest.raises(UserError, match="no label 'dog'"):
        judge.check(images, [Check(family="object", value="dog")])


def test_clip_missing_model_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="could not load CLIP model"):
        ClipJudge(str(tmp_path / "nope"))


def test_torchscript_features(tmp_path):
    """Any TorchScript extractor (such as fid-helper's InceptionV3) plugs in as the FID/KID features."""
    module = torch.jit.script(torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten()))
    path = tmp_path / "features.pt"
    module.save(str(path))
    feats = TorchScriptFeatures(path, size=64)(np.zeros((3, 32, 32, 3), np.uint8))
    assert feats.shape == (3, 12) and torch.allclose(feats, torch.full_like(feats, -1.0))
    with pytest.raises(UserError, match="cannot load TorchScript"):
        TorchScriptFeatures(tmp_path / "missing.pt")
