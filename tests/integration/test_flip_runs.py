"""FLIP through `python -m clip_jax.main`: masked training that switches to unmasked tuning, and its resume."""
import os
import shutil

import jax
import numpy as np
import pytest

from runs import final_params, records, run_main

FLIP_FLAGS = ("--config.flip.mask_ratio=0.5", "--config.flip.unmasked_steps=5", "--config.total_steps=20")


@pytest.fixture(scope="module")
def flip_run(config_file, tmp_path_factory):
    """20 steps through `python -m clip_jax.main`, the last 5 unmasked: (workdir, the run's stderr)."""
    workdir = str(tmp_path_factory.mktemp("flip"))
    return workdir, run_main(config_file, workdir, *FLIP_FLAGS).stderr


def test_flip_run_trains_and_switches_to_unmasked_tuning(flip_run):
    """The loss falls, the log says when the unmasked step takes over, evaluation runs at the end."""
    workdir, stderr = flip_run
    logged = records(workdir)
    train = [r for r in logged if "loss" in r]
    assert [(r["step"], r["flip/mask_ratio"]) for r in train] == [(5, 0.5), (10, 0.5), (15, 0.5), (20, 0.0)]
    assert train[-1]["loss"] < train[0]["loss"]
    assert "FLIP: unmasked tuning from step 15 to 20" in stderr
    assert any("shapes_heldout/top1" in r for r in logged)


def test_resume_in_the_unmasked_phase_matches_the_uninterrupted_run(config_file, flip_run, tmp_path):
    """A run restarted from the step-15 checkpoint compiles only the unmasked step and ends on the
    uninterrupted run's parameters, bit for bit."""
    workdir, _ = flip_run
    resumed = str(tmp_path / "resumed")
    shutil.copytree(os.path.join(workdir, "checkpoints", "15"), os.path.join(resumed, "checkpoints", "15"))
    stderr = run_main(config_file, resumed, *FLIP_FLAGS).stderr
    assert "resumed from step 15" in stderr and "FLIP: unmasked tuning" not in stderr
    jax.tree.map(np.testing.assert_array_equal, final_params(resumed)[0], final_params(workdir)[0])
