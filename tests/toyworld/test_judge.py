import numpy as np

from score_erasure.toyworld import judge as judge_mod
from score_erasure.toyworld import render


def test_judge_reads_fresh_renders(judge):
    accuracy = judge_mod.accuracy(judge, n=600, seed=777)
    assert set(accuracy) == {"shape", "colour", "style", "fire"}
    for head, value in accuracy.items():
        assert value >= 0.99, (head, value)


def test_character_needs_every_attribute(judge):
    rng = np.random.default_rng(3)
    zorblat = render.sample_scene(rng, shape="star", colour="blue", style="striped", fire=False)
    impostor = render.sample_scene(rng, shape="star", colour="blue", style="solid", fire=False)
    verdicts = judge.judge(render.render_batch([zorblat, impostor]))
    assert verdicts.character("Zorblat").tolist() == [True, False]
    assert verdicts.has("shape", "star").tolist() == [True, True]


def test_features_are_the_penultimate_layer(judge):
    images = render.render_batch([render.sample_scene(np.random.default_rng(s)) for s in range(4)])
    feats = judge.features(images)
    assert feats.shape == (4, judge_mod.JudgeNet.FEATURES)
