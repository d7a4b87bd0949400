"""`score erase` end to end on a tiny saved model: delta, record, reload as --model, merge, errors."""

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from score_erasure.delta import ErasureDelta
from score_erasure.errors import UserError
from score_erasure.generate import generate
from score_erasure.jobs.erase import erase
from score_erasure.methods import get_method, hook_restorers
from score_erasure.models import Comparison, load_pipeline, resolve_model
from score_erasure.spec import ConceptSpec
from score_erasure.testing import FAST_CONFIGS as FAST
from score_erasure.testing import tiny_sd_pipeline

SPEC = ConceptSpec.from_words(["star"], synonyms=["starburst"], preserve=["a circle"])



@pytest.fixture(scope="module")
def erased(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("erased")
    erase(str(tiny_model_dir), "esd-x", SPEC, out, FAST["esd-x"], show_progress=False)
    return out


def test_erase_writes_delta_and_record(erased):
    record = json.loads((erased / "erase.json").read_text())
    assert record["method"] == "esd-x" and record["concepts"] == ["star"]
    assert record["seconds"] > 0 and record["peak_rss_mb"] > 0 and "versions" in record
    delta = ErasureDelta.load(erased / "delta.safetensors")
    assert delta.tensors and all("attn2" in k for k in delta.tensors)


def test_delta_load_equals_in_memory_apply(tiny_model_dir, tmp_path):
    pipe = load_pipeline(str(tiny_model_dir))
    before = {k: v.detach().clone() for k, v in pipe.unet.named_parameters()}
    from score_erasure.backends import denoiser_for

    denoiser = denoiser_for(pipe)
    get_method("uce").fit(denoiser, SPEC, get_method("uce").config())
    delta = ErasureDelta.from_changes(before, dict(pipe.unet.named_parameters()), method="uce", concepts=["star"],
                                      base_model=str(tiny_model_dir), base_hash="h")
    delta.save(tmp_path / "d.safetensors")
    fresh = load_pipeline(str(tiny_model_dir))
    ErasureDelta.load(tmp_path / "d.safetensors").apply(fresh, base_hash="h")
    for k, v in pipe.unet.named_parameters():
        torch.testing.assert_close(dict(fresh.unet.named_parameters())[k], v, rtol=0, atol=0)


def test_erase_output_is_a_model(erased, tiny_model_dir):
    base = generate(load_pipeline(str(tiny_model_dir)), ["a star"], [0], steps=3, show_progress=False)
    again = generate(load_pipeline(str(erased)), ["a star"], [0], steps=3, show_progress=False)
    assert again.shape == base.shape
    assert not np.array_equal(base, again)


def _merged_in_plain_diffusers(folder, out, monkeypatch, capsys) -> np.ndarray:
    """`score merge FOLDER --out OUT`, then OUT loaded by plain diffusers: its image of "a star"."""
    import sys

    from score_erasure import cli

    monkeypatch.setattr(sys, "argv", ["score", "merge", str(folder), "--out", str(out)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 0, capsys.readouterr().err
    merged = StableDiffusionPipeline.from_pretrained(out)
    merged.set_progress_bar_config(disable=True)
    return generate(merged, ["a star"], [0], steps=3, show_progress=False)


def test_merge_loads_in_plain_diffusers(erased, tmp_path, monkeypatch, capsys):
    a = _merged_in_plain_diffusers(erased, tmp_path / "merged", monkeypatch, capsys)
    b = generate(load_pipeline(str(erased)), ["a star"], [0], steps=3, show_progress=False)
    np.testing.assert_array_equal(a, b)


def test_delta_refuses_another_base(erased, tmp_path):
    other = tmp_path / "other"
    tiny_sd_pipeline(1).save_pretrained(other)
    delta = ErasureDelta.load(erased / "delta.safetensors")
    with pytest.raises(UserError, match="computed from base model"):
        delta.apply(load_pipeline(str(other)), base_hash="0" * 64)


def test_nan_loss_stops_with_a_user_error(tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match="loss became nan"):
        erase(str(tiny_model_dir), "esd-u", SPEC, tmp_path, {**FAST["esd-u"], "lr": 1e30, "iterations": 3},
              show_progress=False)


def test_resume_continues_to_the_same_delta(tiny_model_dir, tmp_path):
    cfg = {**FAST["esd-x"], "iterations": 4}
    erase(str(tiny_model_dir), "esd-x", SPEC, tmp_path / "a", cfg, checkpoint_every=2, show_progress=False)
    # An interrupted run: two steps done and checkpointed, then resumed to four.
    erase(str(tiny_model_dir), "esd-x", SPEC, tmp_path / "b", {**cfg, "iterations": 2}, show_progress=False)
    erase(str(tiny_model_dir), "esd-x", SPEC, tmp_path / "b", cfg, resume=True, show_progress=False)
    a = ErasureDelta.load(tmp_path / "a" / "delta.safetensors").tensors
    b = ErasureDelta.load(tmp_path / "b" / "delta.safetensors").tensors
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_concept_unknown_to_the_world():
    with pytest.raises(UserError, match="not in the embedded world's vocabulary"):
        resolve_model("embedded").spec(["dragon"])


def test_world_spec_uses_only_seen_words():
    from score_erasure.toyworld import captions

    allowed = captions.training_vocabulary()
    for concept in ("star", "red", "striped", "Zorblat", "fire"):
        spec = resolve_model("embedded").spec([concept])
        for prompt in spec.target_prompts + spec.anchor_prompts + spec.retain_prompts:
            assert set(prompt.split()) <= allowed, prompt


def test_the_world_vocabulary_is_found_on_either_side_of_a_comparison(tmp_path, tiny_model_dir):
    def words(model, base):
        return Comparison(resolve_model(str(model)), resolve_model(str(base)), None, None).words

    world_erasure = tmp_path / "erase-star"
    world_erasure.mkdir()
    (world_erasure / "delta.safetensors").write_bytes(b"")
    (world_erasure / "erase.json").write_text(json.dumps({"base_model": "embedded"}))
    # A world erasure judged against its base saved as a plain folder: the erasure names the vocabulary.
    source = words(world_erasure, tiny_model_dir)
    assert source.name == str(world_erasure)
    assert source.spec(["star"]).anchor_prompts[0] == "a shape"
    assert words(world_erasure, "embedded").name == "embedded"
    tiny = str(tiny_model_dir)
    assert words(tiny, tiny).name == tiny  # neither: the base's words
    assert source.compositional_prompts("star") and not resolve_model(tiny).compositional_prompts("star")


def test_peak_rss_can_be_restarted_for_one_phase():
    from score_erasure.provenance import peak_rss_mb, reset_peak_rss

    big = np.ones(200 * 2**20 // 8)  # 200 MB resident
    with_big = peak_rss_mb()
    del big
    if not reset_peak_rss():
        pytest.skip("this OS cannot reset the peak-RSS count")
    assert peak_rss_mb() < with_big - 150


HOOKS = {"dve": ({"strength": 1.0}, {"concept", "anchor"}, {}),
         "semantic-surgery": ({"concepts": ["star"], "gamma": 0.02, "threshold": 0.5}, {"neutral", "concept", "bias"},
                              {"bias": 10.0}),
         "cgce": ({"concepts": ["star"], "threshold": 0.5, "target": 1e-4, "step": 0.1, "steps": 30},
                  {"neutral", "W", "q", "w", "b"}, {"train_steps": 200})}


@pytest.mark.parametrize("name", list(HOOKS))
def test_an_inference_time_edit_survives_the_delta_and_refuses_to_merge(name, tiny_model_dir, tmp_path):
    settings, tensors, config = HOOKS[name]
    out = tmp_path / name
    delta = erase(str(tiny_model_dir), name, SPEC, out, overrides=config, show_progress=False)
    assert delta.hooks == {name: settings} and set(delta.tensors) == {f"hook.{name}.{t}" for t in tensors}
    base = generate(load_pipeline(str(tiny_model_dir)), ["star"], [0, 1], steps=3, show_progress=False)
    erased = generate(load_pipeline(str(out)), ["star"], [0, 1], steps=3, show_progress=False)  # a target prompt
    assert not np.array_equal(base, erased)  # the hook was re-installed from the delta
    with pytest.raises(UserError, match="inference time"):
        erase(str(tiny_model_dir), name, SPEC, tmp_path / "m", save_pipeline=True, show_progress=False)
    with pytest.raises(UserError, match="cannot be merged"):
        ErasureDelta.load(out / "delta.safetensors").require_mergeable()


def test_an_erase_folder_is_compared_with_its_own_base_by_default(tmp_path):
    """`--base` left out: an erase folder's base comes from its erase.json, anything else falls back to embedded."""
    import json

    folder = tmp_path / "erased"
    folder.mkdir()
    (folder / "delta.safetensors").write_bytes(b"")
    (folder / "erase.json").write_text(json.dumps({"base_model": "embedded-flux"}))
    assert resolve_model(str(folder)).default_base().name == "embedded-flux"
    assert resolve_model(str(tmp_path)).default_base().name == "embedded"
    assert resolve_model("embedded-flux").default_base().name == "embedded-flux"  # its own base, unmodified


def test_a_base_of_another_family_or_size_is_refused():
    """Fidelity and attack targets compare a model with its base image for image: SD against FLUX is a mistake."""
    from score_erasure.models import check_comparable
    from score_erasure.testing import tiny_flux_pipeline, tiny_sd_pipeline

    sd, flux = tiny_sd_pipeline(), tiny_flux_pipeline()
    check_comparable(sd, tiny_sd_pipeline(seed=1), "a", "b")
    with pytest.raises(UserError, match="is a UNet2DConditionModel but base 'b' is a FluxTransformer2DModel"):
        check_comparable(sd, flux, "a", "b")
    with pytest.raises(UserError, match="pixel for pixel"):
        check_comparable(sd, tiny_sd_pipeline(latent_size=16), "a", "b")


def test_outputs_get_the_mode_a_plain_write_would(tmp_path):
    """Atomic writes go through a private temporary file; the result must still be readable by the group and
    others under the usual umask (a model or report on a shared server)."""
    import os
    import stat

    from score_erasure.io import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "report.html", "x")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report.html").stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o644


def test_an_encoder_changing_delta_round_trips_to_plain_diffusers(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """AdvUnlearn trains the text encoder: its delta carries the encoder's weights (and no network's), applies
    on load, and merges into a pipeline that plain diffusers loads and draws the same with."""
    out = tmp_path / "erased"
    erase(str(tiny_model_dir), "advunlearn", SPEC, out, FAST["advunlearn"], show_progress=False)
    delta = ErasureDelta.load(out / "delta.safetensors")
    assert delta.tensors and all(k.startswith("text_encoder:") for k in delta.tensors)
    loaded = load_pipeline(str(out))
    encoder = dict(loaded.text_encoder.named_parameters())
    for key, value in delta.tensors.items():
        torch.testing.assert_close(encoder[key.split(":", 1)[1]], value, rtol=0, atol=0)
    a = _merged_in_plain_diffusers(out, tmp_path / "merged", monkeypatch, capsys)
    np.testing.assert_array_equal(a, generate(loaded, ["a star"], [0], steps=3, show_progress=False))
    base = generate(load_pipeline(str(tiny_model_dir)), ["a star"], [0], steps=3, show_progress=False)
    assert not np.array_equal(a, base)


def test_a_trained_eraser_module_survives_the_delta_and_refuses_to_merge(tiny_model_dir, tmp_path):
    """DuMo's eraser is a module of its own beside the UNet: saved as hook tensors, rebuilt on load."""
    out = tmp_path / "dumo"
    delta = erase(str(tiny_model_dir), "dumo", SPEC, out, overrides=FAST["dumo"], show_progress=False)
    assert set(delta.hooks) == {"dumo"} and "hook.dumo.scales" in delta.tensors
    assert all(k.startswith("hook.dumo.") for k in delta.tensors)
    in_memory = load_pipeline(str(tiny_model_dir))
    ErasureDelta.load(out / "delta.safetensors").apply(in_memory, restorers=hook_restorers())
    loaded = load_pipeline(str(out))
    base = generate(load_pipeline(str(tiny_model_dir)), ["star"], [0, 1], steps=3, show_progress=False)
    erased = generate(loaded, ["star"], [0, 1], steps=3, show_progress=False)
    assert not np.array_equal(base, erased)
    np.testing.assert_array_equal(erased, generate(in_memory, ["star"], [0, 1], steps=3, show_progress=False))
    with pytest.raises(UserError, match="cannot be merged"):
        ErasureDelta.load(out / "delta.safetensors").require_mergeable()
