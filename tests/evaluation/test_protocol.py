"""Protocols: the packaged files load, match their generator, hash stably, and fail with one-line errors."""

import json

import pytest

from score_erasure.errors import UserError
from score_erasure.evaluation.protocol import load_protocol, packaged_path, packaged_tasks, resolve_protocol
from score_erasure.toyworld import vocab

TASKS = ["character", "object", "style", "unsafe"]
# A protocol's content may change only with its version: update a hash here together with the version.
RECORDED_HASHES = {
    ("world-object", "1"): "5b9551ae997d69047dade19b61d6aad777dec9bbc6d5bf85493f3829a61d3dce",
    ("world-style", "1"): "8119ee1ce54144402ed10e5b99ee020ded9fde916a8897dc0d5d65754d778807",
    ("world-character", "1"): "f6f904b62848dceebb90cd3420c7e93b13f8d7d03d2c4bea5b3d17fd6e136b3c",
    ("world-unsafe", "1"): "fa5ebe6414599db452626d60baa154ce9930700adcb583a779fa65ddfe995401",
    ("world-object", "2"): "2d43f4443c9b8186b025109eddef05525cd8192aa7374617994258813e094f7f",
    ("world-style", "2"): "deec219dcc90e936c55511b2b58c222ac4845f6396c35fd1fc11fc43929b2c60",
    ("world-character", "2"): "ec0d37cc63ab496a93750619d93c08fc2d2e17e9dbbc4f82f04453a813867ae0",
    ("world-unsafe", "2"): "150d51bf84d094aab807e32e3c1580246c22a2c1a9cd586f2ed9f1f35120e4ba",
}


def test_packaged_tasks():
    assert packaged_tasks() == TASKS


@pytest.mark.parametrize("task", TASKS + [f"{t}@1" for t in TASKS])
def test_hash_is_recorded_for_the_version(task):
    p = load_protocol(packaged_path(task))
    assert RECORDED_HASHES[(p.name, p.version)] == p.hash, "protocol content changed: bump its version"
    assert p.version == ("1" if task.endswith("@1") else "2") == str(p.format)


def test_hash_ignores_formatting_but_not_content(tmp_path):
    data = json.loads(packaged_path("object").read_text())
    original = load_protocol(packaged_path("object")).hash
    reformatted = tmp_path / "a.json"
    reformatted.write_text(json.dumps(dict(reversed(list(data.items()))), indent=4))
    assert load_protocol(reformatted).hash == original
    data["concepts"]["star"]["target"][0] = "a big star"
    edited = tmp_path / "b.json"
    edited.write_text(json.dumps(data))
    assert load_protocol(edited).hash != original


def test_concepts_are_canonical_names_and_default_sizes_fit_the_time_budget():
    expected = {"object": [c.name for c in vocab.SHAPES], "style": [c.name for c in vocab.STYLES],
                "character": [c.name for c in vocab.CHARACTERS], "unsafe": ["fire"]}
    for task in TASKS:
        p = load_protocol(packaged_path(task))
        assert list(p.concepts) == expected[task]
        assert p.sampling.steps == 25 and p.sampling.guidance == 3.0
        for name in p.concepts:
            images = sum(len(v) for v in p.prompts(name).values()) * p.images_per_prompt
            floor = len(p.neutral) * len(p.floor_seeds)  # the base's second draw
            # two models and the floor at ~0.1 s per image: about 3 minutes
            assert images <= 700 and floor <= 300, (task, name, images, floor)


def test_unknown_task():
    with pytest.raises(UserError, match="unknown task 'objects'; choose one of: character, object"):
        resolve_protocol("objects")


def test_concept_not_in_protocol():
    with pytest.raises(UserError, match="concept 'hexagon' is not in protocol 'world-object'.*star"):
        resolve_protocol("object").concept("hexagon")


def test_the_task_follows_from_a_packaged_concept():
    assert resolve_protocol(None, concept="star").task == "object"
    assert resolve_protocol(None, concept="fire").task == "unsafe"
    assert resolve_protocol(None, concept="Fire").task == "unsafe"  # any case
    with pytest.raises(UserError, match="'hexagon' is in no packaged protocol"):  # the concept is the problem
        resolve_protocol(None, concept="hexagon")


def test_task_must_match_the_given_file():
    with pytest.raises(UserError, match="is for task 'object', not 'style'"):
        resolve_protocol("style", packaged_path("object"))


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read protocol file"),
    ("{not json", "is not valid JSON"),
    ('{"name": "x"}', "is invalid: version: Field required"),
    ("\x89PNG\x00\xff", "is not valid JSON"),
])
def test_unreadable_protocol_file(tmp_path, content, message):
    path = tmp_path / "p.json"
    if content is not None:
        path.write_bytes(content.encode("latin-1"))
    with pytest.raises(UserError, match=message) as exc:
        load_protocol(path)
    assert "\n" not in str(exc.value)


def test_duplicate_seeds_are_rejected(tmp_path):
    data = json.loads(packaged_path("unsafe").read_text())
    data["seeds"] = [0, 0, 1]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="seeds must be distinct"):
        load_protocol(path)
