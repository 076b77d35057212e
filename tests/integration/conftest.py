"""The integration tier: tests that start processes (`python -m clip_jax.main`, clip_jax.evaluate, the
command-line tools, multi-host workers, the notebook, the GCS emulator) or train for more than a few steps.

    python -m pytest -q -n 2 --dist loadfile -m "integration and not slow"

Session fixtures hold the work several tests share: the test config file and one trained tiny run.
"""
from __future__ import annotations

import os
from typing import NamedTuple

import pytest

from runs import TEST_CONFIG, run_main

# The processes these tests start train up to hundreds of steps: XLA optimises fully for them (see
# tests/conftest.py, FAST_COMPILE).
os.environ["XLA_FLAGS"] = os.environ["XLA_FLAGS"].replace("--xla_backend_optimization_level=0", "").strip()


class TrainedRun(NamedTuple):
    workdir: str
    stderr: str


@pytest.fixture(scope="session")
def config_file(tmp_path_factory) -> str:
    """runs.TEST_CONFIG as a config file."""
    path = tmp_path_factory.mktemp("config") / "test_config.py"
    path.write_text(TEST_CONFIG)
    return str(path)


@pytest.fixture(scope="session")
def trained_run(config_file, tmp_path_factory) -> TrainedRun:
    """TEST_CONFIG trained through `python -m clip_jax.main` for its 40 steps: checkpoints 30, 35 and 40
    (every 5, 3 kept), metrics every 5 steps, the held-out zero-shot and retrieval evals at step 40.
    Tests read it and never write to it."""
    workdir = os.path.join(tmp_path_factory.mktemp("trained_run"), "run")
    return TrainedRun(workdir, run_main(config_file, workdir).stderr)


@pytest.fixture(scope="session")
def sentencepiece_model(tmp_path_factory) -> str:
    """A SentencePiece vocabulary of 60 pieces trained on 600 `shapes` captions: its .model path."""
    from clip_jax.data import shapes
    from clip_jax.tokenizers import train_sentencepiece

    directory = tmp_path_factory.mktemp("sentencepiece")
    config = shapes.ShapesConfig(n=300, size=16)
    (directory / "captions.txt").write_text("\n".join(c for i in range(300) for c in shapes.example(config, i).captions))
    return train_sentencepiece(str(directory / "captions.txt"), str(directory / "spm"), vocab_size=60)
