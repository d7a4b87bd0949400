"""The bad-input matrix (issue #19): every mistake a user can make is one line on stderr naming the problem,
exit status 2, no traceback, and no output left behind."""

import json
import pickle
import shutil

import pytest
import torch

from score_erasure.testing import run_cli as run


@pytest.fixture(scope="module")
def erased(tmp_path_factory, tiny_model_dir):
    """A real erase output folder of the tiny model (UCE: a closed form, a second)."""
    from score_erasure.jobs.erase import erase
    from score_erasure.spec import ConceptSpec

    folder = tmp_path_factory.mktemp("erased")
    erase(str(tiny_model_dir), "uce", ConceptSpec.from_words(["star"]), folder, show_progress=False)
    return folder


def _copy(src, tmp_path, name):
    return shutil.copytree(src, tmp_path / name)


def _truncate(path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def case_unknown_concept(tmp_path, **_):
    return ["erase", "--method", "uce", "-c", "dragon"], "not in the embedded world's vocabulary"


def case_unknown_method(tmp_path, **_):
    return ["erase", "--method", "esdx", "-c", "star"], "unknown method 'esdx'; choose one of"


def case_unknown_attack(tmp_path, **_):
    return ["attack", "--attack", "p5d", "-c", "star"], "unknown attack 'p5d'"


def case_unknown_task(tmp_path, **_):
    return ["evaluate", "-c", "star", "--task", "objects"], "unknown task 'objects'"


def case_missing_protocol_file(tmp_path, **_):
    return ["evaluate", "-c", "star", "--protocol", tmp_path / "nope.json"], "cannot read protocol file"


def case_malformed_protocol(tmp_path, **_):
    (tmp_path / "bad.json").write_text('{"name": "x", "task": ')
    return ["evaluate", "-c", "star", "--protocol", tmp_path / "bad.json"], "is not valid JSON"


def case_malformed_concept_toml(tmp_path, **_):
    (tmp_path / "c.toml").write_text("concepts = [star\n")
    return ["erase", "--method", "uce", "--concept-file", tmp_path / "c.toml"], "cannot read concept file"


def case_empty_prompt(tmp_path, **_):
    return ["generate", "-p", " "], "empty prompt"


def case_missing_model_folder(tmp_path, **_):
    return ["generate", "-m", tmp_path / "no-model", "-p", "a star"], "not found"


def case_corrupt_model_folder(tmp_path, tiny_model_dir, **_):
    folder = _copy(tiny_model_dir, tmp_path, "corrupt")
    (folder / "model_index.json").write_text("{ not json")
    return ["generate", "-m", folder, "-p", "a star"], "could not load the model"


def case_truncated_model_weights(tmp_path, tiny_model_dir, **_):
    folder = _copy(tiny_model_dir, tmp_path, "truncated")
    _truncate(next((folder / "unet").glob("*.safetensors")))
    return ["generate", "-m", folder, "-p", "a star"], "could not load the model"


def case_truncated_delta(tmp_path, erased, **_):
    folder = _copy(erased, tmp_path, "trunc-delta")
    _truncate(folder / "delta.safetensors")
    return ["generate", "-m", folder, "-p", "a star"], "does not match the delta its erase.json records"


def case_altered_delta(tmp_path, erased, **_):
    """A delta rewritten with another tensor (same names): its hash no longer matches erase.json."""
    from score_erasure.io import load_tensors, save_tensors

    folder = _copy(erased, tmp_path, "altered-delta")
    tensors, meta = load_tensors(folder / "delta.safetensors")
    name = next(iter(tensors))
    save_tensors({**tensors, name: tensors[name] + 1}, folder / "delta.safetensors", meta)
    return ["generate", "-m", folder, "-p", "a star"], "does not match the delta its erase.json records"


def case_edited_erase_record(tmp_path, erased, other_model_dir, **_):
    """erase.json edited to name another base: the delta's recorded base hash no longer matches."""
    folder = _copy(erased, tmp_path, "edited")
    record = json.loads((folder / "erase.json").read_text())
    (folder / "erase.json").write_text(json.dumps({**record, "base_model": str(other_model_dir)}))
    return ["generate", "-m", folder, "-p", "a star"], "this delta was computed from base model"


def case_delta_on_another_base(tmp_path, erased, other_model_dir, **_):
    return ["merge", erased, "-m", other_model_dir], "this delta was computed from base model"


def case_zero_iterations(tmp_path, **_):
    (tmp_path / "cfg.json").write_text(json.dumps({"iterations": 0}))
    return ["erase", "--method", "score", "-c", "star", "--config", tmp_path / "cfg.json"], "iterations"


def case_negative_steps(tmp_path, **_):
    return ["generate", "-p", "a star", "--steps", "-3"], "--steps"


def case_nan_config(tmp_path, **_):
    (tmp_path / "cfg.json").write_text('{"lr": NaN}')
    return ["erase", "--method", "esd-x", "-c", "star", "--config", tmp_path / "cfg.json"], "invalid esd-x config: lr"


def case_infinite_config(tmp_path, **_):
    (tmp_path / "cfg.toml").write_text("erase_scale = inf\n")
    return ["erase", "--method", "uce", "-c", "star", "--config", tmp_path / "cfg.toml"], "invalid uce config"


def case_pickled_weights(tmp_path, tiny_model_dir, **_):
    """A model folder whose weights are a pickle: refused (safetensors only), never unpickled."""
    folder = _copy(tiny_model_dir, tmp_path, "pickled")
    for weights in (folder / "unet").glob("*.safetensors"):
        weights.unlink()
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps({"w": torch.zeros(1)}))
    return ["generate", "-m", folder, "-p", "a star"], "could not load the model"


CASES = {name[5:]: case for name, case in dict(globals()).items() if name.startswith("case_")}


@pytest.mark.parametrize("name", list(CASES))
def test_a_bad_input_is_one_line_and_leaves_nothing(name, capsys, monkeypatch, tmp_path, tiny_model_dir,
                                                    other_model_dir, erased):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    args, message = CASES[name](tmp_path=inputs, tiny_model_dir=tiny_model_dir, other_model_dir=other_model_dir,
                                erased=erased)
    out = tmp_path / "out"
    code, _, err = run(capsys, monkeypatch, *args, "--out", out)
    assert code == 2, err
    assert message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 or err.lstrip().startswith("Usage:"), err  # ours, or click's box
    assert not out.exists() or not any(p for p in out.rglob("*") if p.is_file()), sorted(out.rglob("*"))


def test_a_full_disk_mid_write_leaves_no_file(tmp_path, monkeypatch):
    """An atomic write that fails half way (ENOSPC) leaves neither a partial file nor its temporary."""
    import errno

    from score_erasure.io import atomic_write

    def fill_the_disk(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(tmp_path / "delta.safetensors", fill_the_disk)
    assert list(tmp_path.iterdir()) == []

