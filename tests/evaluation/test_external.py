"""Standard prompt sets as protocols: each loader gives a valid protocol with the set's task, judge, prompts and
seeds; a wrong file, option or offline hub id is one line; the CLI's file reproduces the protocol hash.

The files under data/external are synthetic stand-ins with the real sets' columns (see its README)."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from score_erasure.errors import UserError
from score_erasure.evaluation import external
from score_erasure.evaluation.judges import ClipJudge, NudeNetJudge
from score_erasure.evaluation.protocol import Check, Protocol, load_protocol, resolve_protocol
from score_erasure.testing import run_cli as run

DATA = Path(__file__).parent / "data" / "external"
I2P = DATA / "i2p_benchmark.csv"


def reloaded(protocol: Protocol) -> Protocol:
    """The protocol as a file would give it back."""
    return Protocol.model_validate(json.loads(json.dumps(protocol.model_dump(mode="json"))))


def judge_reads_every_check(protocol: Protocol) -> None:
    """The protocol's judge accepts every detect and expect check (validated without loading a model)."""
    judge_class = {"nudenet": NudeNetJudge, "clip": ClipJudge}[protocol.judge.name]
    judge = judge_class.__new__(judge_class)
    judge.labels = protocol.judge.options.get("labels", {})
    for concept in protocol.concepts.values():
        judge.validate([*concept.detect, *(c for r in concept.retained for c in r.expect)])


def test_i2p_targets_the_sexual_category_and_keeps_each_prompts_seed():
    p = external.build_protocol("i2p", I2P)
    assert reloaded(p).hash == p.hash
    assert (p.task, p.judge.name, list(p.concepts)) == ("nudity", "nudenet", ["nudity"])
    assert p.judge.options == {"classes": list(NudeNetJudge.DEFAULT_CLASSES), "threshold": 0.6}
    nudity = p.concept("nudity")
    assert nudity.detect == (Check(family="nudity", value="exposed"),)
    # the blank prompt is dropped; unlabelled prompts with nudity >= 50% are the generality group
    assert nudity.target == ("synthetic figure study in charcoal", "synthetic marble statue, museum light",
                             "synthetic life drawing class")
    assert nudity.generality == ("synthetic fresco of bathers",)
    assert all(not check.present for r in nudity.retained for check in r.expect)
    settings = p.source["prompt_settings"]  # every row's seed and guidance, per prompt (I2P repeats prompts)
    assert settings["synthetic figure study in charcoal"] == [{"seed": 3141592653, "guidance": 7.0},
                                                              {"seed": 2000000002, "guidance": 7.5}]
    assert settings["synthetic marble statue, museum light"] == [{"seed": 2718281828, "guidance": 10.0}]
    assert settings["synthetic fresco of bathers"] == [{"seed": 1732050807, "guidance": 13.0}]
    assert set(settings) == {*nudity.target, *nudity.generality}
    # image 0 of a prompt is the set's own image (its first row's seed), the next seeds follow its rows'
    assert p.seeds_of("synthetic figure study in charcoal") == [3141592653, 2000000002]
    assert p.seeds_of("synthetic fresco of bathers") == [1732050807, 1732050808]
    assert p.seeds_of(nudity.retained[0].prompt) == list(p.seeds)  # prompts the set does not seed: the shared ones
    assert p.source["file"] == "i2p_benchmark.csv"
    assert p.source["sha256"] == hashlib.sha256(I2P.read_bytes()).hexdigest()
    judge_reads_every_check(p)


def test_i2p_min_nudity_and_limit_shrink_the_target_and_change_the_hash():
    full = external.build_protocol("i2p", I2P)
    strict = external.build_protocol("i2p", I2P, min_nudity=20)
    assert strict.concept("nudity").target == ("synthetic figure study in charcoal",
                                               "synthetic marble statue, museum light")
    small = external.build_protocol("i2p", I2P, limit=1, seeds=(5, 6, 7))
    assert small.concept("nudity").target == ("synthetic figure study in charcoal",) and small.seeds == (5, 6, 7)
    assert len({full.hash, strict.hash, small.hash}) == 3


def test_the_source_is_recorded_by_content_not_by_path(tmp_path):
    copy = tmp_path / "elsewhere" / "i2p_benchmark.csv"
    copy.parent.mkdir()
    shutil.copy(I2P, copy)
    assert external.build_protocol("i2p", copy).hash == external.build_protocol("i2p", I2P).hash
    # a folder holding the file works too
    assert external.build_protocol("i2p", tmp_path).hash == external.build_protocol("i2p", I2P).hash


def test_unlearndiff_nudity_targets_every_prompt_with_its_evaluation_seed():
    p = external.build_protocol("unlearndiff-nudity", DATA / "nudity.csv")
    assert reloaded(p).hash == p.hash and p.task == "nudity" and p.judge.name == "nudenet"
    nudity = p.concept("nudity")
    assert nudity.target == ("synthetic portrait on a bed, soft light ", "synthetic beach scene at noon",
                             "synthetic classical sculpture hall")
    assert nudity.generality == ("synthetic classical sculpture hall",)  # the one not labelled sexual
    assert p.source["prompt_settings"]["synthetic beach scene at noon"] == [{"seed": 987654321, "guidance": 12.0}]
    judge_reads_every_check(p)


def test_mace_cifar10_classes_synonyms_and_clip_labels():
    p = external.build_protocol("mace-cifar10", DATA / "10_objects_paraphrase.json")
    assert reloaded(p).hash == p.hash
    assert (p.task, p.judge.name, list(p.concepts)) == ("object-cifar10", "clip", ["airplane", "cat", "ship"])
    assert p.judge.options["labels"] == {"object": ["airplane", "cat", "ship"]}
    assert p.judge.options["model"] == external.DEFAULT_CLIP
    cat = p.concept("cat")
    assert cat.detect == (Check(family="object", value="cat"),)
    assert cat.target == ("a photo of the cat",)
    assert cat.generality == ("a photo of the tabby", "a photo of the kitten")
    assert [(r.prompt, r.expect[0].value) for r in cat.retained] == [("a photo of the airplane", "airplane"),
                                                                     ("a photo of the ship", "ship")]
    assert p.seeds == tuple(range(8))
    judge_reads_every_check(p)


def test_mace_celebrity_reads_names_off_the_templates_and_keeps_mace_seeds():
    p = external.build_protocol("mace-celebrity", DATA / "celebrity_100_concepts.csv", clip_model="my/clip")
    assert reloaded(p).hash == p.hash
    assert (p.task, p.judge.name, list(p.concepts)) == ("celebrity", "clip", ["Ada Quill", "Bo Ferrant"])
    assert p.seeds == (1, 2)  # every prompt of the file has evaluation seeds 1 and 2
    assert p.judge.options["model"] == "my/clip"
    assert p.judge.options["labels"] == {"celebrity": ["Ada Quill", "Bo Ferrant", "Cy Marlow", "Dee Rook"]}
    ada = p.concept("Ada Quill")
    assert ada.target == ("A portrait of Ada Quill", "Ada Quill in an official photo")
    assert all("Ada Quill" in g for g in ada.generality) and not set(ada.generality) & set(ada.target)
    assert [(r.prompt, r.expect[0].value) for r in ada.retained][:2] == [
        ("A portrait of Cy Marlow", "Cy Marlow"), ("Cy Marlow in an official photo", "Cy Marlow")]
    assert len(ada.retained) == 4
    judge_reads_every_check(p)
    small = external.build_protocol("mace-celebrity", DATA / "celebrity_100_concepts.csv", limit=1)
    assert list(small.concepts) == ["Ada Quill"] and {r.expect[0].value for r in small.concept("Ada Quill").retained} \
        == {"Cy Marlow"}


def test_mace_artist_erases_type_0_and_keeps_type_1():
    p = external.build_protocol("mace-artist", DATA / "art_100_concepts.csv")
    assert reloaded(p).hash == p.hash
    assert (p.task, p.judge.name, list(p.concepts)) == ("style-artists", "clip", ["Ela Voss", "Finn Oduya"])
    assert p.seeds == (1, 2)
    assert p.concept("Finn Oduya").target == ("Image in the style of Finn Oduya", "A famous artwork by Finn Oduya")
    assert {r.expect[0].value for r in p.concept("Ela Voss").retained} == {"Gus Tamm"}
    judge_reads_every_check(p)


def test_a_missing_column_names_it_and_the_columns_found(tmp_path):
    lines = I2P.read_text().splitlines()
    header = lines[0].split(",")
    drop = header.index("sd_seed")
    broken = tmp_path / "i2p_benchmark.csv"
    broken.write_text("\n".join([",".join(h for i, h in enumerate(header) if i != drop), "a,sexual"]) + "\n")
    with pytest.raises(UserError, match=r"no column 'sd_seed' \(or 'evaluation_seed'\); its columns: 'prompt', 'cat"):
        external.build_protocol("i2p", broken)
    with pytest.raises(UserError, match="no column 'artist'"):
        external.build_protocol("mace-artist", DATA / "celebrity_100_concepts.csv")


def test_bad_values_and_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "i2p_benchmark.csv"
    bad.write_text(I2P.read_text().replace(",60.0,40.0", ",lots,40.0"))
    with pytest.raises(UserError, match="nudity_percentage is 'lots', not a number"):
        external.build_protocol("i2p", bad)
    odd = tmp_path / "celebrity_100_concepts.csv"
    odd.write_text(",type,prompt,evaluation_seed\n0,erased,Someone singing,1\n")
    with pytest.raises(UserError, match="no celebrity name in prompt 'Someone singing'"):
        external.build_protocol("mace-celebrity", odd)
    flat = tmp_path / "objects.json"
    flat.write_text('["airplane", "cat"]')
    with pytest.raises(UserError, match="should map at least two classes"):
        external.build_protocol("mace-cifar10", flat)


def test_unknown_set_option_not_for_the_set_and_bad_seeds():
    with pytest.raises(UserError, match="unknown prompt set 'i2q'; choose one of: i2p, unlearndiff-nudity"):
        external.build_protocol("i2q", I2P)
    with pytest.raises(UserError, match="option min_nudity does not apply to 'mace-artist'"):
        external.build_protocol("mace-artist", DATA / "art_100_concepts.csv", min_nudity=10)
    assert external.parse_seeds("0, 1,2") == (0, 1, 2)
    for text in ("0,x", "3", "1,1"):
        with pytest.raises(UserError, match="--seeds"):
            external.parse_seeds(text)


def test_a_hub_id_while_offline_says_what_to_download_and_where_to_point():
    with pytest.raises(UserError) as exc:  # conftest sets HF_HUB_OFFLINE=1; the id exists nowhere
        external.build_protocol("i2p", "nobody-here/no-such-prompt-set")
    message = str(exc.value)
    assert "\n" not in message
    for needle in ("hub dataset 'nobody-here/no-such-prompt-set'", "HF_HUB_OFFLINE=1", "i2p_benchmark.csv",
                   "huggingface.co/datasets/AIML-TUDA/i2p", "--source PATH"):
        assert needle in message
    with pytest.raises(UserError, match="is not a file, a folder or a hub dataset id; download nudity.csv"):
        external.build_protocol("unlearndiff-nudity", "no/such/nudity.csv")




def test_cli_writes_a_protocol_whose_hash_loading_reproduces(capsys, monkeypatch, tmp_path):
    out_file = tmp_path / "protocols" / "i2p.json"
    code, out, err = run(capsys, monkeypatch, "protocol-build", "i2p", "--source", I2P, "--out", out_file,
                         "--seeds", "0,1,2", "--min-nudity", "20")
    assert code in (0, None), err
    loaded = load_protocol(out_file)
    assert f"hash {loaded.hash}" in out and "target 2, generality 1" in out
    assert loaded.hash == external.build_protocol("i2p", I2P, seeds=(0, 1, 2), min_nudity=20).hash
    assert resolve_protocol("nudity", out_file).hash == loaded.hash  # what --task nudity --protocol FILE loads
    assert not list(out_file.parent.glob(".*.tmp"))  # written atomically


def test_cli_errors_are_one_line(capsys, monkeypatch, tmp_path):
    code, _, err = run(capsys, monkeypatch, "protocol-build", "i2p", "--source", "nobody-here/no-such-prompt-set",
                       "--out", tmp_path / "p.json")
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and "HF_HUB_OFFLINE=1" in lines[0]
    assert not (tmp_path / "p.json").exists()
    code, out, _ = run(capsys, monkeypatch, "protocol-build", "--help")
    assert code == 0 and "mace-celebrity" in out
