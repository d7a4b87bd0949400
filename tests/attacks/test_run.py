"""The attack runner: ASR and the pre-attack rate from the judge's verdicts, the report, and resuming."""

import json

import numpy as np
import pytest

from score_erasure.attacks import get_attack
from score_erasure.attacks.base import found_prompts
from score_erasure.evaluation.cache import ImageCache
from score_erasure.jobs.attack import Subject, attack_pipeline
from score_erasure.jobs.report import rerender
from score_erasure.testing import FAST_ATTACK_CONFIGS as FAST


class ScriptedJudge:
    """Sees the concept in every image of an attacked prompt's batch and in none of the unattacked target prompts'
    batch (told apart by size: the unattacked batch holds several prompts' images), or in every other image."""

    name, has_features = "scripted", False

    def __init__(self, seeds: int, alternate: bool = False):
        self.seeds, self.alternate = seeds, alternate

    def check(self, images, checks):
        if len(images) != self.seeds:
            return np.zeros(len(images), dtype=bool)
        return np.arange(len(images)) % 2 == 0 if self.alternate else np.ones(len(images), dtype=bool)

    def describe(self):
        return {"name": self.name}


def _attack(tiny, tiny_base, protocol, spec, out, judge, name="paraphrase", overrides=None, resume=True):
    attack = get_attack(name)
    subject = Subject(tiny, tiny_base, "tiny-0", "tiny-1", "hash-0", "hash-1")
    return attack_pipeline(subject, attack, attack.config({**FAST[name], **(overrides or {})}), protocol, "star", out,
                           judge=judge, spec=spec, compositional=["a striped red pentagram"], cache=ImageCache(None),
                           resume=resume, show_progress=False)


def test_asr_is_the_attacked_fraction_and_pre_asr_the_unattacked(tiny, tiny_base, protocol, spec, tmp_path):
    report = _attack(tiny, tiny_base, protocol, spec, tmp_path / "a", ScriptedJudge(len(protocol.seeds)))
    assert report.asr.value == 1.0 and report.pre_asr.value == 0.0
    half = _attack(tiny, tiny_base, protocol, spec, tmp_path / "b", ScriptedJudge(len(protocol.seeds), True))
    assert half.asr.value == 0.5 and 0 <= half.asr.ci_low <= 0.5 <= half.asr.ci_high <= 1
    assert [r.rate for r in half.rows] == [0.5] * 3


def test_report_records_asr_budget_and_found_prompts(tiny, tiny_base, protocol, spec, world_judge, tmp_path):
    report = _attack(tiny, tiny_base, protocol, spec, tmp_path, world_judge, "unlearndiff")
    data = json.loads((tmp_path / "report.json").read_text())
    for key in ("asr", "pre_asr"):
        assert set(data[key]) == {"value", "ci_low", "ci_high"}
        assert 0 <= data[key]["ci_low"] <= data[key]["value"] <= data[key]["ci_high"] <= 1
    assert data["budget"]["iterations"] == 3 and data["budget"]["prompts"] == 2 and data["seconds"] > 0
    assert [r["prompt"] for r in data["rows"]] == list(protocol.concept("star").target)
    assert all(r["pre_rate"] is not None for r in data["rows"])
    assert "<html>" in (tmp_path / "report.html").read_text()
    found = found_prompts(tmp_path)
    assert len(found) == 2 and found[0].adversarial == report.rows[0].adversarial
    html = (tmp_path / "report.html").read_text()
    (tmp_path / "report.html").unlink()
    assert rerender(tmp_path).read_text() == html  # `score report` renders an attack folder too


@pytest.fixture
def counting(monkeypatch):
    """Counts calls to the attacks' run functions."""
    from score_erasure import attacks

    calls = []
    for name, attack in attacks.ATTACKS.items():
        def run(*args, _run=attack.run, **kwargs):
            calls.append(args[1])
            return _run(*args, **kwargs)

        monkeypatch.setitem(attacks.ATTACKS, name, attacks.Attack(attack.name, run, attack.config_class,
                                                                   attack.summary, attack.prompts))
    return calls


def test_a_rerun_skips_finished_prompts(tiny, tiny_base, protocol, spec, world_judge, tmp_path, counting):
    first = _attack(tiny, tiny_base, protocol, spec, tmp_path, world_judge, "inversion")
    assert len(counting) == 2 and first.resumed == 0
    (tmp_path / "prompts" / "001.safetensors").unlink()  # as if interrupted before the second prompt
    second = _attack(tiny, tiny_base, protocol, spec, tmp_path, world_judge, "inversion")
    assert len(counting) == 3 and second.resumed == 1
    assert second.asr == first.asr and second.attack_seconds > 0
    changed = _attack(tiny, tiny_base, protocol, spec, tmp_path, world_judge, "inversion", {"lr": 1e-2})
    assert len(counting) == 5 and changed.resumed == 0  # other settings: nothing is reused
    _attack(tiny, tiny_base, protocol, spec, tmp_path, world_judge, "inversion", {"lr": 1e-2}, resume=False)
    assert len(counting) == 7


def test_best_of_asr_counts_the_unattacked_prompt_too(tiny, tiny_base, protocol, spec, tmp_path):
    class Unattacked(ScriptedJudge):  # the unattacked batch shows the concept, the attacked ones do not
        def check(self, images, checks):
            return np.full(len(images), len(images) != self.seeds)

    report = _attack(tiny, tiny_base, protocol, spec, tmp_path, Unattacked(len(protocol.seeds)), "ring-a-bell")
    assert report.asr.value == 0.0 and report.pre_asr.value == 1.0 and report.best_of_asr.value == 1.0
    paraphrased = _attack(tiny, tiny_base, protocol, spec, tmp_path / "p", Unattacked(len(protocol.seeds)))
    assert paraphrased.best_of_asr is None  # paraphrases are other prompts: nothing to pair


def test_results_of_prompts_this_run_does_not_have_are_removed(tiny, tiny_base, protocol, spec, tmp_path):
    stale = tmp_path / "prompts" / "009.safetensors"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left by a run with ten prompts")
    _attack(tiny, tiny_base, protocol, spec, tmp_path, ScriptedJudge(len(protocol.seeds)))
    assert not stale.exists() and len(found_prompts(tmp_path)) == 3
