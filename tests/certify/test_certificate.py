"""`score certify` end to end on tiny models: the report's numbers, its stated assumption, attack prompts."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from score_erasure import cli
from score_erasure.certify.probes import fewest_images
from score_erasure.errors import UserError
from score_erasure.jobs.attack import run_attack
from score_erasure.jobs.certify import certify
from score_erasure.jobs.report import rerender

SMALL = {"n": 16, "folds": 2}


def test_certificate_reports_model_and_base_leakage(tmp_path, tiny_dirs, star_protocol):
    model, base = map(str, tiny_dirs)
    out = tmp_path / "out"
    report = certify(model, "star", out, base=base, protocol_path=star_protocol, overrides=SMALL,
                     cache_dir=tmp_path / "cache")
    again = certify(model, "star", tmp_path / "again", base=base, protocol_path=star_protocol, overrides=SMALL,
                    cache_dir=tmp_path / "cache")
    assert again.base_mi_nats == report.base_mi_nats and again.mi_nats == report.mi_nats  # the base's from the cache
    assert len(list((tmp_path / "cache").rglob("seed*.png"))) == 2 * SMALL["n"]  # the base's two classes
    data = json.loads((out / "report.json").read_text())
    for key in ("mi_nats", "base_mi_nats", "fano_nats", "pinsker_max_accuracy"):
        assert set(data[key]) == {"value", "ci_low", "ci_high"}
        assert 0 <= data[key]["ci_low"] <= data[key]["value"] <= data[key]["ci_high"]
    assert data["mi_nats"]["ci_high"] <= math.log(2) and data["pinsker_max_accuracy"]["ci_high"] <= 1
    assert set(data["probes"]) == {"logistic", "mlp"} and data["n_per_class"] == 16
    assert "lower bound" in data["assumption"] and "near-optimal" in data["assumption"]
    assert data["neutral_prompts"] == [""]  # a model outside the world: ESD's anchor, the empty prompt
    assert report.model_hash != report.base_hash
    html = (out / "report.html").read_text()
    assert "lower bound" in html and (out / "images" / "base-concept.png").is_file()
    (out / "report.html").unlink()
    assert rerender(out).read_text() == html  # `score report` renders a certificate folder too


def test_attack_finds_join_the_concept_prompts(tmp_path, tiny_dirs, star_protocol):
    model, base = map(str, tiny_dirs)
    run_attack(model, "inversion", "star", tmp_path / "attack", base=base, protocol_path=star_protocol,
               overrides={"iterations": 2, "target_images": 1, "batch": 1}, use_cache=False, show_progress=False)
    report = certify(model, "star", tmp_path / "certificate", base=model, protocol_path=star_protocol,
                     attack_folders=[tmp_path / "attack"], overrides={**SMALL, "neutral": "protocol"},
                     use_cache=False)
    assert "<S*> a star" in report.concept_prompts and report.base_mi_nats == report.mi_nats
    assert len(report.neutral_prompts) == 4
    # each source alone: its prompts and images add up to the whole; sources too small to probe say so
    sources = report.sources
    assert list(sources) == ["targets", "paraphrases", "attack"][:len(sources)] and "attack" in sources
    assert sum(s.prompts for s in sources.values()) == len(report.concept_prompts)
    assert sum(s.images for s in sources.values()) == report.n_per_class
    for s in sources.values():
        assert (s.mi_nats is None) == (s.images < fewest_images(SMALL["folds"]))
        assert s.mi_nats is None or 0 <= s.mi_nats.value <= math.log(2)
    assert "By source of the concept prompts" in (tmp_path / "certificate" / "report.html").read_text()
    with pytest.raises(UserError, match="holds no attack results"):
        certify(model, "star", tmp_path / "again", protocol_path=star_protocol, attack_folders=[tmp_path])


def test_certify_command(tmp_path, tiny_dirs, star_protocol, capsys, monkeypatch):
    model, base = tiny_dirs
    monkeypatch.setattr(sys, "argv", ["score", "certify", "--concept", "star", "--model", str(model), "--base",
                                      str(base), "--protocol", str(star_protocol), "-n", "8", "--folds", "2",
                                      "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    out = capsys.readouterr().out
    assert exc.value.code in (0, None) and "mi_nats" in out and "near-optimal" in out


def test_both_classes_draw_each_seed_once(tiny_dirs, star_protocol):
    from score_erasure.attacks.base import FoundPrompt
    from score_erasure.backends import denoiser_for
    from score_erasure.certify.certificate import class_images
    from score_erasure.evaluation.protocol import load_protocol
    from score_erasure.generate import generate
    from score_erasure.models import load_pipeline
    from score_erasure.prompting.tokens import token_prompt

    pipe, protocol = load_pipeline(str(tiny_dirs[0])), load_protocol(star_protocol)
    d = denoiser_for(pipe)
    inputs = [FoundPrompt(token_prompt(d, [p]), p) for p in ("a star", "a circle", "a heart")]
    images = class_images(pipe, inputs, 5, protocol, seed=10)
    expected = generate(pipe, ["a circle"], [14], steps=protocol.sampling.steps, show_progress=False)[0, 0]
    assert images.shape[0] == 5 and np.array_equal(images[4], expected)  # input 4 mod 3 = 1, seed 14


def test_cached_base_images_are_the_images_a_fresh_draw_gives(tmp_path, tiny_dirs, star_protocol):
    """Keyed by the conditioning and the call's seeds: the same input at the same seeds hits, anything else draws."""
    from score_erasure.attacks.base import FoundPrompt
    from score_erasure.backends import denoiser_for
    from score_erasure.certify.certificate import class_images
    from score_erasure.evaluation.cache import ImageCache
    from score_erasure.evaluation.protocol import load_protocol
    from score_erasure.models import load_pipeline
    from score_erasure.prompting.tokens import token_prompt

    pipe, protocol = load_pipeline(str(tiny_dirs[1])), load_protocol(star_protocol)
    d = denoiser_for(pipe)
    inputs = [FoundPrompt(token_prompt(d, [p]), p) for p in ("a star", "a circle", "a heart")]
    cache = ImageCache(tmp_path)
    fresh = class_images(pipe, inputs, 5, protocol, seed=10)
    first = class_images(pipe, inputs, 5, protocol, seed=10, cache=(cache, "base-hash"))
    assert (cache.generated, cache.hits) == (5, 0) and np.array_equal(first, fresh)
    second = class_images(pipe, inputs, 5, protocol, seed=10, cache=(cache, "base-hash"))
    assert (cache.generated, cache.hits) == (5, 5) and np.array_equal(second, fresh)
    # four images: "a circle" is drawn at seed 11 alone (it was drawn at 11 and 14 together), the others hit
    four = class_images(pipe, inputs, 4, protocol, seed=10, cache=(cache, "base-hash"))
    assert (cache.generated, cache.hits) == (6, 8) and np.array_equal(four, class_images(pipe, inputs, 4, protocol, 10))
    other = class_images(pipe, inputs, 5, protocol, seed=10, cache=(cache, "another-model"))
    assert cache.generated == 11 and np.array_equal(other, fresh)


def test_a_judge_without_features_is_refused_before_any_model_loads(tmp_path):
    """NudeNet only detects; the probes need features. The error names the judge, not the missing model."""
    from score_erasure.evaluation import external

    i2p = Path(__file__).parents[1] / "evaluation" / "data" / "external" / "i2p_benchmark.csv"
    protocol = tmp_path / "i2p.json"
    protocol.write_text(json.dumps(external.build_protocol("i2p", i2p).model_dump(mode="json")))
    with pytest.raises(UserError, match="judge 'nudenet' has no image features"):
        certify(str(tmp_path / "no-such-model"), "nudity", tmp_path / "out", protocol_path=protocol)
