"""SDD: the output is the EMA teacher, and a resumed run carries the teacher's weights through its checkpoint."""

import torch

from score_erasure.backends import denoiser_for
from score_erasure.methods import get_method
from score_erasure.methods.loop import Checkpointing
from score_erasure.testing import tiny_sd_pipeline


def _fit(spec, overrides, checkpointing=None):
    denoiser, method = denoiser_for(tiny_sd_pipeline(0)), get_method("sdd")
    method.fit(denoiser, spec, method.config({"steps": 4, "lr": 1e-3, **overrides}), checkpointing=checkpointing,
               show_progress=False)
    return {k: v.detach().clone() for k, v in denoiser.parameters("xattn").items()}


def test_the_output_is_the_ema_teacher(spec):
    base = {k: v.detach().clone() for k, v in denoiser_for(tiny_sd_pipeline(0)).parameters("xattn").items()}
    student = _fit(spec, {"iterations": 3, "ema": 0.0})  # m = 0: the teacher is the student
    slow = _fit(spec, {"iterations": 3, "ema": 0.9})
    moved = {k: (student[k] - base[k]).norm() for k in base}
    assert max(moved.values()) > 0
    for k in base:  # θ⁻ moves a fraction of the way: 1 - 0.9^3 of it at most
        assert (slow[k] - base[k]).norm() <= 0.3 * moved[k] + 1e-12, k


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(spec, tmp_path):
    whole = _fit(spec, {"iterations": 4, "ema": 0.5})
    path = tmp_path / "checkpoint.safetensors"
    _fit(spec, {"iterations": 2, "ema": 0.5}, Checkpointing(path, every=2))
    resumed = _fit(spec, {"iterations": 4, "ema": 0.5}, Checkpointing(path, every=2, resume=True))
    for k in whole:
        torch.testing.assert_close(resumed[k], whole[k], rtol=0, atol=0)
