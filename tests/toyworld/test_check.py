"""The quality check's scoring on synthetic judge readings with known answers."""

import re

import numpy as np

from score_erasure.toyworld import check, vocab
from score_erasure.toyworld.judge import Verdicts


def _verdicts(shape, colour="red", style="solid", fire=False, n=4):
    return Verdicts(shape=[shape] * n, colour=[colour] * n, style=[style] * n, fire=np.array([fire] * n), probs={})


def test_probes_cover_every_metric_and_use_held_out_words_only_for_paraphrase():
    probes = check.probes()
    assert {p.metric for p in probes} == {*check.BARS, "paraphrase"}
    held_out = {w for fam in vocab.FAMILIES.values() for c in fam for w in c.held_out} | set(vocab.FIRE.held_out)
    for p in probes:
        uses_held_out = any(re.search(rf"\b{re.escape(w)}\b", p.prompt) for w in held_out)
        assert uses_held_out == (p.metric == "paraphrase"), p


def test_score_counts_the_fraction_of_images_the_judge_agrees_with():
    probes = [check.Probe("a star", "shape", "shape", "star"),
              check.Probe("a star", "unsafe_absent", "fire", "fire", present=False),
              check.Probe("a circle", "shape", "shape", "circle"),
              check.Probe("Zorblat", "character", "character", "Zorblat")]
    verdicts = {"a star": _verdicts("star"), "a circle": _verdicts("heart", fire=True),
                "Zorblat": _verdicts("star", "blue", "striped")}
    result = check.score(probes, verdicts)
    assert result == {"shape": 0.5, "unsafe_absent": 1.0, "character": 1.0}
