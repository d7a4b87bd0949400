"""Training is seeded and resumable: a run split by a step budget ends where a straight run ends."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from score_erasure.toyworld import model
from score_erasure.toyworld.train import TrainConfig, install_weights, train

TINY = TrainConfig(pool_size=24, vae_steps=3, vae_batch=2, unet_steps=4, unet_batch=2, checkpoint_every=2,
                   warmup_steps=1)


def _weights(run):
    return load_file(str(run / "unet" / "diffusion_pytorch_model.safetensors"))


def test_resumed_run_equals_straight_run(tmp_path):
    straight = train(tmp_path / "a", TINY)
    assert straight["complete"]
    first = train(tmp_path / "b", TINY, max_steps=5)  # stops inside the UNet stage
    assert not first["complete"] and not (tmp_path / "b" / "unet").exists()
    resumed = train(tmp_path / "b", TINY, resume=True)
    assert resumed["complete"]
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert "versions" in resumed and resumed["config"]["unet_steps"] == 4


def test_flux_training_resumes_exactly_and_installs_a_loadable_model(tmp_path):
    from score_erasure.generate import generate
    from score_erasure.toyworld.model import WEIGHTS_DIR, load_embedded_flux
    from score_erasure.toyworld.train import install_weights

    cfg = TINY.model_copy(update={"flux_steps": 4, "flux_batch": 2})
    assert train(tmp_path / "a", cfg, arch="flux")["complete"]
    assert not train(tmp_path / "b", cfg, arch="flux", max_steps=3)["complete"]
    record = train(tmp_path / "b", cfg, arch="flux", resume=True)
    assert record["complete"] and record["parameters"]["flux"] > 0 and "vae" not in record["seconds"]
    name = "flux/diffusion_pytorch_model.safetensors"
    a, b = load_file(str(tmp_path / "a" / name)), load_file(str(tmp_path / "b" / name))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    weights = tmp_path / "weights"
    shutil.copytree(WEIGHTS_DIR / "vae", weights / "vae")
    install_weights(tmp_path / "b", weights, arch="flux")
    pipe = load_embedded_flux(weights)
    assert generate(pipe, ["a red star"], [0], steps=2, show_progress=False).shape == (1, 1, 32, 32, 3)


def test_batches_built_in_a_loader_process_train_the_same_weights(tmp_path):
    runs = {}
    for workers in (0, 1):
        cfg = TINY.model_copy(update={"loader_workers": workers, "flux_steps": 3, "flux_batch": 2})
        train(tmp_path / f"sd{workers}", cfg)
        train(tmp_path / f"flux{workers}", cfg, arch="flux")
        runs[workers] = (_weights(tmp_path / f"sd{workers}"),
                         load_file(str(tmp_path / f"flux{workers}" / "flux/diffusion_pytorch_model.safetensors")))
    for in_process, loaded in zip(runs[0], runs[1], strict=True):
        for k in in_process:
            torch.testing.assert_close(in_process[k], loaded[k], rtol=0, atol=0, msg=k)


def test_autoregressive_training_resumes_exactly_and_gives_a_loadable_pipeline(tmp_path):
    """VQ-VAE then the Janus transformer; the run's ar/ folder is a model (`--model runs/x/ar`)."""
    from transformers.models.janus.modeling_janus import JanusVQVAE

    from score_erasure.generate import generate
    from score_erasure.models import resolve_model

    cfg = TINY.model_copy(update={"vq_steps": 3, "vq_batch": 2, "ar_steps": 4, "ar_batch": 2,
                                  "vq_decoder_steps": 2})
    assert train(tmp_path / "a", cfg, arch="ar")["complete"]
    assert not train(tmp_path / "b", cfg, arch="ar", max_steps=5)["complete"]  # stops inside the AR stage
    record = train(tmp_path / "b", cfg, arch="ar", resume=True)
    assert record["complete"] and record["parameters"]["ar"] > 0
    assert set(record["seconds"]) >= {"vq", "ar", "vq-decoder"}
    name = "ar/model/model.safetensors"
    a, b = load_file(str(tmp_path / "a" / name)), load_file(str(tmp_path / "b" / name))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    # the decoder stage moves the decoder only (every image keeps its codes), and ar/ holds its decoder
    vq, refined = (JanusVQVAE.from_pretrained(tmp_path / "b" / f).state_dict() for f in ("vq", "vq-decoder"))
    decoding = ("decoder.", "post_quant_conv.")
    assert all(torch.equal(vq[k], refined[k]) for k in vq if not k.startswith(decoding))
    assert any(not torch.equal(vq[k], refined[k]) for k in vq if k.startswith(decoding))
    assert all(torch.equal(b[f"model.vqmodel.{k}"], v) for k, v in refined.items() if f"model.vqmodel.{k}" in b)
    pipe = resolve_model(str(tmp_path / "b" / "ar")).load()
    assert generate(pipe, ["a red star"], [0], show_progress=False).shape == (1, 1, 32, 32, 3)
    install_weights(tmp_path / "b", weights_dir=tmp_path / "weights", arch="ar")  # what embedded-ar loads
    shipped = load_file(str(tmp_path / "weights" / "ar" / "model.safetensors"))
    assert shipped.keys() == a.keys()
    assert all(t.dtype == torch.float16 for t in shipped.values() if t.is_floating_point())
    assert (tmp_path / "weights" / "ar-train.json").is_file()
    installed = model.load_embedded_ar(tmp_path / "weights")
    assert generate(installed, ["a red star"], [0], show_progress=False).shape == (1, 1, 32, 32, 3)


def test_next_scale_training_resumes_exactly_and_installs_a_loadable_model(tmp_path):
    """The multi-scale tokenizer (from the shipped embedded-ar's VQ-VAE) then the next-scale transformer; a run
    redone without --resume codes the pool with its own new tokenizer, not the cached codes of the old one."""
    from score_erasure.generate import generate
    from score_erasure.io import load_metadata
    from score_erasure.provenance import hash_directory

    cfg = TINY.model_copy(update={"var_vq_steps": 3, "vq_batch": 2, "var_steps": 4, "var_batch": 2})
    assert train(tmp_path / "a", cfg, arch="var")["complete"]
    assert not train(tmp_path / "b", cfg, arch="var", max_steps=5)["complete"]  # stops inside the transformer
    record = train(tmp_path / "b", cfg, arch="var", resume=True)
    assert record["complete"] and set(record["seconds"]) >= {"var-vq", "var"}
    for part in ("var/vq/diffusion_pytorch_model.safetensors", "var/transformer/diffusion_pytorch_model.safetensors"):
        a, b = load_file(str(tmp_path / "a" / part)), load_file(str(tmp_path / "b" / part))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    codes = tmp_path / "b" / "var-codes.safetensors"
    first = hash_directory(tmp_path / "b" / "var" / "vq")
    assert load_metadata(codes)["tokenizer"] == first
    train(tmp_path / "b", cfg.model_copy(update={"var_vq_lr": 1e-2}), arch="var")  # not resumed: a new tokenizer
    assert hash_directory(tmp_path / "b" / "var" / "vq") != first
    assert load_metadata(codes)["tokenizer"] == hash_directory(tmp_path / "b" / "var" / "vq")
    install_weights(tmp_path / "b", weights_dir=tmp_path / "weights", arch="var")
    assert (tmp_path / "weights" / "var-train.json").is_file()
    installed = model.load_embedded_var(tmp_path / "weights")
    assert generate(installed, ["a red star"], [0], show_progress=False).shape == (1, 1, 32, 32, 3)


def test_ema_warmup_forgets_the_initialisation_that_a_flat_decay_keeps():
    """embedded-var's EMA: after n updates the decay is min(0.999, (1+n)/(10+n)), so the random start's share of
    the average after 3,000 steps is the product of those decays (about 2e-25) where a flat 0.999 keeps 5%."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from score_erasure.toyworld.train import _ema_warmup_fn

    def start_share(fn, steps):
        net = torch.nn.Linear(1, 1, bias=False).double()
        with torch.no_grad():
            net.weight.fill_(1.0)
        ema = AveragedModel(net, multi_avg_fn=fn, use_buffers=True)
        ema.update_parameters(net)  # the first update copies the start
        with torch.no_grad():
            net.weight.fill_(0.0)
        for _ in range(steps - 1):
            ema.update_parameters(net)
        return ema.module.weight.item()

    expected = 1.0
    for n in range(1, 3000):
        expected *= min(0.999, (1 + n) / (10 + n))
    assert start_share(_ema_warmup_fn(0.999), 3000) == pytest.approx(expected, rel=1e-9)
    assert expected < 1e-20
    assert start_share(get_ema_multi_avg_fn(0.999), 3000) == pytest.approx(0.999 ** 2999, rel=1e-9)


def test_trainer_averages_with_the_warm_up_only_when_asked(tmp_path):
    """`_Trainer(ema_warmup=True)` (embedded-var's `var_ema_warmup`) uses the ramp; the default keeps the flat decay."""
    from score_erasure.toyworld.train import _Trainer

    def second_update(warmup: bool) -> float:
        net = torch.nn.Linear(1, 1, bias=False).double()
        with torch.no_grad():
            net.weight.fill_(1.0)
        trainer = _Trainer("t", net, 1e-3, 2, 0, tmp_path, 1, ema_decay=0.999, ema_warmup=warmup)
        trainer.ema.update_parameters(net)
        with torch.no_grad():
            net.weight.fill_(0.0)
        trainer.ema.update_parameters(net)
        return trainer.ema.module.weight.item()

    assert second_update(True) == pytest.approx(2 / 11)
    assert second_update(False) == pytest.approx(0.999)
    assert TrainConfig().var_ema_warmup is False  # the shipped model's recipe


@pytest.mark.parametrize("arch", ["sd", "var"])
def test_the_pool_takes_embedded_vars_own_character_rate(tmp_path, monkeypatch, arch):
    """`var_character_rate` sizes embedded-var's pool only, so the other models' shipped records stay true."""
    from score_erasure.toyworld import captions

    class Drawn(Exception):
        pass

    def make_dataset(n, seed, character_rate, fire_rate):
        raise Drawn(character_rate)

    monkeypatch.setattr(captions, "make_dataset", make_dataset)
    with pytest.raises(Drawn) as drawn:
        train(tmp_path, TINY.model_copy(update={"character_rate": 0.1, "var_character_rate": 0.4}), arch=arch)
    assert drawn.value.args == ({"sd": 0.1, "var": 0.4}[arch],)


def test_the_shipped_next_scale_model_is_the_default_recipe():
    """`score world train --arch var` with no --config retrains the shipped embedded-var (its record's config)."""
    record = json.loads((model.WEIGHTS_DIR / "var-train.json").read_text())
    assert TrainConfig.model_validate(record["config"]) == TrainConfig()
