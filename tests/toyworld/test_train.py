"""Training is seeded and resumable: a run split by a step budget ends where a straight run ends."""

import torch
from safetensors.torch import load_file

from score_erasure.toyworld.train import TrainConfig, train

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
