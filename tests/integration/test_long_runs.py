"""Long runs that cannot silently go bad, through `python -m clip_jax.main` on one process (the two-process
cases are in test_multihost.py; a kill during a save in test_train_loop.py): a diverging run, damaged
checkpoints, a full disk.

The damaged and full-disk cases start from a copy of the session's trained run (checkpoints 30, 35, 40).
"""
import os
import re
import resource
import shutil
import subprocess

import jax
import numpy as np
import pytest

from runs import REPO, TIMEOUT_S, checkpoint_steps, final_params, main_command, records, run_main

DIVERGING = (  # the loss is NaN from step 5 on (AdamW moves every parameter by ~1e6 a step)
    "--config.optimizer.learning_rate=1e6", "--config.optimizer.warmup_steps=2", "--config.max_nonfinite_steps=5",
    "--config.checkpoint_every_steps=1", "--config.log_every_steps=1", "--config.evals.shapes_heldout.every_steps=1000",
)
DIVERGED = re.compile(
    r"error: training diverged: steps (\d+)-(\d+) were all non-finite \(5 in a row, config.max_nonfinite_steps = 5\); "
    r"the last finite loss was (\S+), at step (\d+)\."
)


def truncate_largest_file(directory: str) -> str:
    """Cuts the largest file under `directory` to 1000 bytes (a write cut short); its path."""
    sizes = {os.path.join(d, f): os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(directory) for f in fs}
    path = max(sizes, key=sizes.get)
    os.truncate(path, 1000)
    return path


def assert_diverged_run(workdir: str, stderr: str) -> None:
    """The run ended with one line naming the steps and the last finite loss, and its checkpoints are the
    newest three before the divergence, every value finite."""
    (line,) = [line for line in stderr.splitlines() if "training diverged" in line]
    first, last, loss, good = DIVERGED.search(line).groups()
    first, last, good = int(first), int(last), int(good)
    assert last - first == 4 and good == first - 1, line
    logged = {r["step"]: r for r in records(workdir) if "loss" in r}
    assert float(loss) == pytest.approx(logged[good]["loss"], rel=1e-5)  # printed to 6 significant digits
    assert all(not np.isfinite(logged[s]["loss"]) for s in range(first, last + 1))
    assert [logged[s]["train/nonfinite_steps"] for s in range(first, last + 1)] == [1, 2, 3, 4, 5]
    assert checkpoint_steps(workdir) == list(range(max(good - 2, 1), good + 1))  # the newest 3: none rotated away
    for step in checkpoint_steps(workdir):
        params, _ = final_params(workdir, step)
        assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params)), step


def test_divergence_ends_the_run_and_keeps_the_good_checkpoints(config_file, tmp_path):
    workdir = str(tmp_path / "run")
    result = subprocess.run(main_command(config_file, workdir, *DIVERGING), capture_output=True, text=True,
                            cwd=REPO, timeout=TIMEOUT_S)
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.rstrip().splitlines()[-1].startswith("error: training diverged")  # the last line
    assert_diverged_run(workdir, result.stderr)


def test_damaged_checkpoints_are_set_aside_and_the_run_resumes_from_the_newest_intact(config_file, trained_run, tmp_path):
    """A truncated data file in checkpoint 40 and a missing item in 35: each is named in one line and kept as
    STEP.damaged, the run resumes from 30 and its new checkpoint 40 equals the undamaged run's bit for bit."""
    workdir = str(tmp_path / "run")
    shutil.copytree(trained_run.workdir, workdir)
    checkpoints = os.path.join(workdir, "checkpoints")
    truncate_largest_file(os.path.join(checkpoints, "40", "variables"))
    shutil.rmtree(os.path.join(checkpoints, "35", "train"))
    stderr = run_main(config_file, workdir).stderr
    assert re.search(r"checkpoint 40 in \S+ cannot be read \(ValueError: OUT_OF_RANGE: Error reading .*\); kept as 40.damaged", stderr)
    assert re.search(r"checkpoint 35 in \S+ cannot be read \(FileNotFoundError: .*35/train.*\); kept as 35.damaged", stderr)
    assert "resumed from step 30" in stderr
    assert {"35.damaged", "40.damaged"} <= set(os.listdir(checkpoints)) and checkpoint_steps(workdir) == [30, 35, 40]
    resumed, _ = final_params(workdir)
    expected, _ = final_params(trained_run.workdir)
    jax.tree.map(np.testing.assert_array_equal, resumed, expected)


def test_a_full_disk_ends_the_run_and_keeps_the_checkpoints(config_file, trained_run, tmp_path):
    """A file-size limit (RLIMIT_FSIZE: writes past it fail with EFBIG, as they fail with ENOSPC on a full
    disk, with no mount or privilege needed) of 1 MB lets the log through and stops the save of step 45."""
    workdir = str(tmp_path / "run")
    shutil.copytree(trained_run.workdir, workdir)

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))

    result = subprocess.run(main_command(config_file, workdir, "--config.total_steps=45"), capture_output=True,
                            text=True, cwd=REPO, timeout=TIMEOUT_S, preexec_fn=limit_file_size)
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.rstrip().splitlines()[-1]
    assert last.startswith(f"error: cannot write checkpoints to {workdir}/checkpoints: ") and "File too large" in last, result.stderr[-3000:]
    assert "the checkpoints already there (30, 35, 40) are as they were" in last
    assert checkpoint_steps(workdir) == [30, 35, 40]
    for step in (30, 35, 40):
        kept, _ = final_params(workdir, step)
        jax.tree.map(np.testing.assert_array_equal, kept, final_params(trained_run.workdir, step)[0])
