"""End to end through `python -m clip_jax.main` on one process: logging, evals, resume after SIGKILL,
SIGTERM, init_from (several processes: test_multihost.py). The uninterrupted run is the session's
`trained_run` (conftest.py), which other tests share."""
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from runs import REPO, checkpoint_steps, final_params, main_command, records, run_main


def test_run_logs_metrics_checkpoints_and_evals(trained_run):
    workdir, stderr = trained_run
    logged = records(workdir)
    train = [r for r in logged if "loss" in r]
    assert [r["step"] for r in train] == list(range(5, 41, 5))
    health = [f"{kind}/{tower}" for kind in ("grad_norm", "param_norm", "update_ratio") for tower in ("image", "text", "heads")]
    for key in ("loss", "learning_rate", "logit_scale", "grad_norm", "i2t_top1", "samples_per_second", "step_time", *health):
        assert all(np.isfinite(r[key]) for r in train), key
    for kind in ("grad_norm", "param_norm"):  # the towers' norms make up the global one
        assert all(np.isclose(r[kind] ** 2, sum(r[f"{kind}/{t}"] ** 2 for t in ("image", "text", "heads")), rtol=1e-5)
                   for r in train), kind
    assert all(0 < r["update_ratio/image"] < 1e-2 and r["train/nonfinite_steps"] == 0 for r in train)
    assert train[-1]["loss"] < train[0]["loss"]
    evals = [r for r in logged if "shapes_heldout/top1" in r]
    assert [r["step"] for r in evals] == [40]
    hits = evals[0]["shapes_heldout/top1"] * 48  # a count over the 48 held-out images, padding excluded
    assert hits == pytest.approx(round(hits), abs=1e-4)
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir))
    assert checkpoint_steps(workdir) == [30, 35, 40]  # keep_checkpoints = 3
    assert "ETA" in stderr  # the progress line
    _, metadata = final_params(workdir)
    assert metadata["model"] == "ViT-Tiny-8" and metadata["overrides"]["text"]["layers"] == 1


def test_sigkill_during_an_async_save_resumes_and_matches_the_uninterrupted_run(config_file, trained_run, tmp_path):
    """Killed while the asynchronous save of step 10 (~80 MB with Adam's moments) is in flight, its temporary
    directory on disk: the resume starts from step 5, the newest committed, and ends bit for bit where the
    uninterrupted run ended."""
    workdir = str(tmp_path / "killed")
    process = subprocess.Popen(
        main_command(config_file, workdir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO
    )
    checkpoints = os.path.join(workdir, "checkpoints")
    deadline, in_flight = time.time() + 300, []
    while not in_flight and process.poll() is None and time.time() < deadline:
        if checkpoint_steps(workdir) == [5]:
            in_flight = [d for d in os.listdir(checkpoints) if d.startswith("10.") and "tmp" in d]
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert in_flight and checkpoint_steps(workdir) == [5], (in_flight, os.listdir(checkpoints))
    assert "resumed from step 5" in run_main(config_file, workdir).stderr
    resumed, _ = final_params(workdir)
    expected, _ = final_params(trained_run[0])
    jax.tree.map(np.testing.assert_array_equal, resumed, expected)


def test_sigterm_saves_and_stops(config_file, tmp_path):
    workdir = str(tmp_path / "preempted")
    process = subprocess.Popen(
        main_command(config_file, workdir, "--config.total_steps=100000", "--config.checkpoint_every_steps=100000"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 300
    while not (os.path.exists(metrics) and os.path.getsize(metrics)) and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    steps = checkpoint_steps(workdir)
    assert len(steps) == 1 and 5 <= steps[0] < 100000


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_init_from_starts_at_given_weights(config_file, trained_run, tmp_path, loss):
    """A CLIP run's weights start a CLIP run, or a SigLIP run whose logit bias the weights lack."""
    workdir = str(tmp_path / "finetune")
    run_main(
        config_file, workdir, f"--config.init_from={trained_run[0]}", "--config.total_steps=1",
        "--config.optimizer.warmup_steps=0", "--config.optimizer.learning_rate=1e-9",
        "--config.evals.shapes_heldout.every_steps=1000", f"--config.loss={loss}",
    )
    started, _ = final_params(workdir)
    source, _ = final_params(trained_run[0])
    if loss == "siglip":
        assert float(started.pop("logit_bias")) == pytest.approx(-10.0, abs=1e-6)  # SigLIP's init, one tiny step
    # one AdamW step at lr 1e-9 moves each entry by at most lr * (1 + wd * |p|) < 1e-8
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), started, source)


def test_bad_config_field_is_named_before_compiling(config_file, tmp_path):
    result = subprocess.run(
        main_command(config_file, str(tmp_path), "--config.loss=infonce"), capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode != 0
    assert "config.loss" in result.stderr and "infonce" in result.stderr


def test_headline_command_without_data_names_the_source_and_flag(tmp_path):
    """`python -m clip_jax.main --config=configs/vit_b32.py` as written, on a machine without LAION:
    one line naming the missing source and the flag, before anything compiles; the workdir defaults."""
    result = subprocess.run(
        [sys.executable, "-m", "clip_jax.main", f"--config={os.path.join(REPO, 'configs', 'vit_b32.py')}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: config.data.train: data source 'wds:/data/laion400m/{00000..41407}.tar'")
    assert "matches no files" in last and "--config.data.train=SOURCE" in last
    assert (tmp_path / "runs" / "vit_b32").is_dir()
