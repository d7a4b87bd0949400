"""DuMo: the eraser starts as the identity, its residuals follow the time-layer scales, and it is the only thing
trained."""

import torch

from score_erasure.backends import denoiser_for
from score_erasure.methods import get_method
from score_erasure.methods.dumo import BUCKETS, install
from score_erasure.testing import FAST_CONFIGS as FAST


def _eraser(denoiser):
    from diffusers import ControlNetModel

    torch.manual_seed(0)
    return ControlNetModel.from_unet(denoiser.network, conditioning_embedding_out_channels=(16,),
                                     conditioning_channels=denoiser.network.config.in_channels)


def test_the_eraser_starts_as_the_identity_and_its_residuals_follow_the_scales(pipe):
    denoiser = denoiser_for(pipe)
    x, cond = denoiser.noise(2, torch.Generator().manual_seed(0)), denoiser.encode(["a star", "a circle"])
    early, late = torch.tensor(900), torch.tensor(100)  # buckets 18 and 2 of 20
    with torch.no_grad():
        base = {t: denoiser.predict(x, t, cond) for t in (early, late)}
        hook = install(denoiser, _eraser(denoiser), strength=1.0)
        for t in (early, late):  # zero-initialised convolutions: exactly the base
            torch.testing.assert_close(denoiser.predict(x, t, cond), base[t], rtol=0, atol=0)
        for conv in [*hook.epr.controlnet_down_blocks, hook.epr.controlnet_mid_block]:
            conv.weight.normal_(0, 0.1)
        hook.scales[int(early) * BUCKETS // 1000] = 0  # this bucket's residuals switched off
        torch.testing.assert_close(denoiser.predict(x, early, cond), base[early], rtol=0, atol=0)
        assert not torch.allclose(denoiser.predict(x, late, cond), base[late])
        with hook.off():
            torch.testing.assert_close(denoiser.predict(x, late, cond), base[late], rtol=0, atol=0)


def test_dumo_trains_the_eraser_and_its_scales_only(pipe, spec):
    denoiser = denoiser_for(pipe)
    before = {k: v.detach().clone() for k, v in denoiser.network.named_parameters()}
    method = get_method("dumo")
    trace = method.fit(denoiser, spec, method.config(FAST["dumo"]), show_progress=False)
    assert len(trace.rows) == 2 and {"erase", "retain"} <= set(trace.rows[0])
    assert all(torch.equal(v, before[k]) for k, v in denoiser.network.named_parameters())
    (hook,) = denoiser.network._score_erasure_hooks.values()
    assert not torch.equal(hook.scales, torch.ones_like(hook.scales))
    assert not any(p.requires_grad for p in hook.parameters())
