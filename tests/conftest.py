"""Shared fixtures. The hub is switched off for the whole suite: nothing here may touch the network."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture
def default_run_options():
    """The process's run options at their defaults for one test, and put back as they were after it."""
    import dataclasses

    from score_erasure.options import OPTIONS, RunOptions

    saved = dataclasses.asdict(OPTIONS)
    for name, value in dataclasses.asdict(RunOptions()).items():
        setattr(OPTIONS, name, value)
    yield OPTIONS
    for name, value in saved.items():
        setattr(OPTIONS, name, value)


@pytest.fixture(scope="session")
def benchmark_script():
    """Load a script of benchmarks/ (not a package) by name, as a module."""
    import importlib.util
    from pathlib import Path

    def load(name: str):
        path = Path(__file__).parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def embedded():
    """The shipped embedded pipeline (loaded once: importing and loading costs seconds)."""
    from score_erasure.models import load_pipeline

    return load_pipeline("embedded")


@pytest.fixture(scope="session")
def judge():
    from score_erasure.toyworld.judge import WorldJudge

    return WorldJudge.load()


@pytest.fixture(scope="session")
def saved_embedded(embedded, tmp_path_factory):
    """The embedded pipeline written as a plain diffusers directory."""
    path = tmp_path_factory.mktemp("embedded-pipeline")
    embedded.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random SD pipeline (32x32 images, which the world judge reads) saved as a diffusers folder, so that
    `--model` can name it."""
    from score_erasure.testing import tiny_sd_pipeline

    path = tmp_path_factory.mktemp("tiny-model")
    tiny_sd_pipeline(0).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def other_model_dir(tmp_path_factory):
    """A second tiny model with other weights: another base, or a stand-in for an erased model."""
    from score_erasure.testing import tiny_sd_pipeline

    path = tmp_path_factory.mktemp("tiny-model-2")
    tiny_sd_pipeline(1).save_pretrained(path)
    return path
