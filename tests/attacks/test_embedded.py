"""On the unmodified embedded model (slow: minutes; needs the trained weights)."""

import pytest

from score_erasure.toyworld.model import WEIGHTS_DIR

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (WEIGHTS_DIR / "unet").is_dir(), reason="the embedded model is not trained yet")]


def test_unlearndiff_never_makes_the_unmodified_model_worse(tmp_path):
    from score_erasure.jobs.attack import run_attack

    report = run_attack("embedded", "unlearndiff", "star", tmp_path, task="object", use_cache=False,
                        show_progress=False)
    # The attack optimises the unmodified model towards the concept's images: it may not lower the rate
    # beyond sampling noise (the interval of the attacked rate reaches the unattacked rate).
    assert report.asr.ci_high >= report.pre_asr.value
    assert report.attack_seconds < 600
