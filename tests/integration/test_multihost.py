"""Multi-host training through `python -m clip_jax.main`: 2 processes x 4 CPU devices (gloo on loopback).

Runs, shared by the tests (module fixtures):
  two:      2 processes, 15 steps, uninterrupted.
  killed:   2 processes, SIGKILL to both once checkpoint 10 exists, then 2 processes again to 15.
  one:      1 process x 8 devices, 15 steps, uninterrupted.
  elastic:  the killed run's step-10 checkpoint resumed by 1 process x 8 devices.
  damaged:  a copy of `two` with checkpoints 15 and 10 damaged, resumed by 2 processes.
  diverged: 2 processes driven to NaN (test_long_runs.DIVERGING).
Every run reads 2 data streams (config.data.num_streams=2), so every global
batch is the same examples in the same order whatever the process count, and
every run shards parameters and optimizer state over all 8 devices (mesh
fsdp=8): with 2 processes, FSDP spans both hosts.

The runs tokenize with a 60-piece SentencePiece vocabulary (conftest.sentencepiece_model), not CLIP's
49,408: the step's one large transfer, the token embedding's all-gather and gradient all-reduce (12.6 MB
at CLIP's vocabulary), stalls on loopback TCP, where gloo's sockets carry one 64 KB segment at a time
and the receiver acknowledges it after its 40 ms delayed-ACK timer (measured: 20 s a step at CLIP's
vocabulary, 0.5-0.8 s at 60 pieces; docs/testing.md).
"""
import os
import shutil
import signal
import time

import jax
import numpy as np
import pytest

from clip_jax.training.checkpointing import Checkpointer
from runs import (
    TIMEOUT_S, checkpoint_steps, final_params, losses, main_command, records, start_cluster, wait_cluster,
    wait_for_checkpoint,
)
from test_long_runs import DIVERGING, assert_diverged_run, truncate_largest_file

STEPS = 15
OVERRIDES = (
    f"--config.total_steps={STEPS}", "--config.batch_size=16", "--config.log_every_steps=1",
    "--config.data.num_streams=2", "--config.mesh.data=1", "--config.mesh.fsdp=8", "--heartbeat_timeout_seconds=10",
)


@pytest.fixture(scope="module")
def multihost_config(config_file, sentencepiece_model):
    """(config file, the tokenizer override every run of this file adds)."""
    return config_file, f"--config.data.tokenizer=sentencepiece:{sentencepiece_model}"


def start(multihost_config, workdir, num_processes, *overrides):
    """num_processes processes of one run (4 devices each when > 1, else 8): (processes, their log directory)."""
    config_file, tokenizer = multihost_config
    log_dir = workdir + "_logs"
    command = main_command(config_file, workdir, *OVERRIDES, tokenizer, *overrides)
    return start_cluster(command, num_processes, log_dir), log_dir


def run(multihost_config, workdir, num_processes, *overrides):
    codes, logs = wait_cluster(*start(multihost_config, workdir, num_processes, *overrides))
    for code, log in zip(codes, logs):
        assert code == 0, log[-3000:]
    return logs


@pytest.fixture(scope="module")
def two(multihost_config, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("two") / "run")
    logs = run(multihost_config, workdir, 2)
    return workdir, logs


@pytest.fixture(scope="module")
def killed(multihost_config, tmp_path_factory):
    """(workdir resumed to the end, a copy of it as it was when killed)."""
    workdir = str(tmp_path_factory.mktemp("killed") / "run")
    processes, _ = start(multihost_config, workdir, 2)
    wait_for_checkpoint(workdir, 10, processes)
    for p in processes:
        p.send_signal(signal.SIGKILL)
    assert [p.wait() for p in processes] == [-signal.SIGKILL] * 2, "the run ended before it could be killed"
    snapshot = workdir + "_at_kill"
    shutil.copytree(workdir, snapshot)
    assert 10 <= max(checkpoint_steps(snapshot)) < STEPS
    run(multihost_config, workdir, 2)
    return workdir, snapshot


@pytest.fixture(scope="module")
def one(multihost_config, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("one") / "run")
    run(multihost_config, workdir, 1)
    return workdir


def test_two_processes_train_evaluate_and_checkpoint_with_fsdp_over_both(two):
    workdir, logs = two
    assert "process 0 of 2, 8 devices" in logs[0] and "process 1 of 2, 8 devices" in logs[1]
    assert "'fsdp': 8" in logs[0]  # the mesh: every parameter split over both processes' devices
    assert sorted(losses(workdir)) == list(range(1, STEPS + 1))  # metrics.jsonl is written once, by process 0
    assert any("shapes_heldout/top1" in r for r in records(workdir))
    assert "Total:" in logs[0]  # the parameter overview, from shapes
    assert checkpoint_steps(workdir) == [5, 10, 15]
    data_state = Checkpointer(workdir, keep=3).restore_data(STEPS)
    assert sorted(data_state["streams"]) == ["0", "1"]  # both processes' input positions, in one item
    assert [s["examples"] for s in data_state["streams"].values()] == [STEPS * 8] * 2  # 8 rows per stream a step


def test_sentencepiece_vocabulary_sets_the_text_tower(two):
    """The run's SentencePiece vocabulary, trained on the captions, sets the text tower's size and pooling."""
    params, metadata = final_params(two[0])
    assert metadata["overrides"]["text"]["vocab_size"] == 60 and metadata["overrides"]["text"]["pool_type"] == "last"
    assert params["text"]["token_embedding"]["embedding"].shape == (60, 128)
    assert np.isfinite(list(losses(two[0]).values())).all()


def test_two_processes_resume_past_damaged_checkpoints(multihost_config, two, tmp_path):
    """Checkpoint 15 with a truncated data file (a part that only one process may read: FSDP splits every
    parameter over both) and 10 without its train item: the processes agree, set both aside, resume from 5
    and end where the undamaged run ended, bit for bit."""
    workdir = str(tmp_path / "run")
    shutil.copytree(two[0], workdir)
    truncate_largest_file(os.path.join(workdir, "checkpoints", "15", "variables"))
    shutil.rmtree(os.path.join(workdir, "checkpoints", "10", "train"))
    for log in run(multihost_config, workdir, 2):
        assert "kept as 15.damaged" in log and "kept as 10.damaged" in log and "resumed from step 5" in log
    jax.tree.map(np.testing.assert_array_equal, final_params(workdir)[0], final_params(two[0])[0])


def test_two_processes_end_together_when_training_diverges(multihost_config, tmp_path):
    """Both processes count the same non-finite steps (the step's counts are replicated) and end with the
    same line at the same step; the checkpoints are the newest three before the divergence."""
    workdir = str(tmp_path / "run")
    codes, logs = wait_cluster(*start(multihost_config, workdir, 2, *DIVERGING, "--config.total_steps=40"))
    assert codes == [1, 1], logs[0][-3000:]
    lines = [[line.split("error: ", 1)[1] for line in log.splitlines() if "training diverged" in line] for log in logs]
    assert len(lines[0]) == 1 and lines[0] == lines[1]
    assert_diverged_run(workdir, logs[0])


def test_resume_after_sigkill_is_bit_identical(two, killed):
    resumed, _ = final_params(killed[0])
    expected, _ = final_params(two[0])
    jax.tree.map(np.testing.assert_array_equal, resumed, expected)


# 1 process and 2 processes reduce over the devices in different orders (in-process against gloo
# collectives), so losses agree to float32 rounding: measured 2e-7 relative; the test allows 2e-5
# (test_train_step.METRIC_RTOL). A global batch holding other examples moves the loss by ~1e-2.
LOSS_RTOL = 2e-5


def adam_drift_bound(multihost_config, first_step, last_step):
    """How far two runs' parameters can drift apart from step first_step to last_step on rounding alone.

    Each AdamW step moves an entry by at most lr * adam_update_bound (plus weight decay, which
    only scales an existing difference by 1 - lr * wd): see test_train_step.
    """
    import runpy

    from test_train_step import adam_update_bound

    from clip_jax.training import optim

    config = runpy.run_path(multihost_config[0])["get_config"]()
    config.total_steps = STEPS
    schedule, opt = optim.learning_rate_schedule(config), config.optimizer
    bound = 0.0
    for step in range(first_step, last_step):
        bound += 2 * float(schedule(step)) * adam_update_bound(opt.b1, opt.b2, step + 1)
    return bound


def assert_same_training(multihost_config, got_workdir, want_workdir, first_step=0):
    got, want = losses(got_workdir), losses(want_workdir)
    steps = [s for s in want if s > first_step]
    np.testing.assert_allclose([got[s] for s in steps], [want[s] for s in steps], rtol=LOSS_RTOL)
    bound = adam_drift_bound(multihost_config, first_step, STEPS)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=bound),
                 final_params(got_workdir)[0], final_params(want_workdir)[0])


def test_one_process_trains_like_two(multihost_config, two, one):
    """The same global batches (2 data streams) on 1 x 8 and 2 x 4 devices, every step."""
    assert_same_training(multihost_config, one, two[0])


def test_elastic_resume_on_one_process(multihost_config, two, killed, tmp_path):
    """The 2-process run's step-10 checkpoint, resumed by 1 process: no example repeated or skipped."""
    workdir = str(tmp_path / "elastic")
    shutil.copytree(killed[1], workdir)
    for step in checkpoint_steps(workdir):  # resume from step 10 exactly
        if step > 10:
            shutil.rmtree(os.path.join(workdir, "checkpoints", str(step)))
    run(multihost_config, workdir, 1)
    assert "resumed from step 10" in open(workdir + "_logs/process_0.log").read()
    assert_same_training(multihost_config, workdir, two[0], first_step=10)


def test_sigterm_to_both_processes_saves_once_and_both_exit_0(multihost_config, tmp_path):
    workdir = str(tmp_path / "preempted")
    processes, log_dir = start(
        multihost_config, workdir, 2, "--config.total_steps=100000", "--config.checkpoint_every_steps=100000"
    )
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + TIMEOUT_S
    while not (os.path.exists(metrics) and os.path.getsize(metrics)) and time.time() < deadline:
        assert all(p.poll() is None for p in processes), "a process ended early"
        time.sleep(0.05)
    for p in processes:
        p.send_signal(signal.SIGTERM)
    codes, logs = wait_cluster(processes, log_dir)
    assert codes == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    steps = checkpoint_steps(workdir)
    assert len(steps) == 1 and 1 <= steps[0] < 100000
    for log in logs:  # both stopped at the step JAX's preemption sync manager named
        assert f"preemption notice: every process saves a checkpoint at step {steps[0]} and stops" in log


def test_an_error_on_one_process_ends_every_process(multihost_config, tmp_path):
    """Process 1's data stream has no valid example: it logs that error and exits; process 0 is ended too."""
    images = tmp_path / "images"
    images.mkdir()
    rows = ["filepath,caption"]
    for i in range(8):  # stream 0 reads rows 0, 2, 4, 6 (files that exist), stream 1 the missing odd ones
        if i % 2 == 0:
            from PIL import Image

            Image.new("RGB", (40, 40), (10 * i, 0, 0)).save(images / f"{i}.png")
        rows.append(f"images/{i}.png,a red square number {i}")
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    workdir = str(tmp_path / "failing")
    started = time.time()
    codes, logs = wait_cluster(*start(multihost_config, workdir, 2, f"--config.data.train=csv:{tmp_path / 'data.csv'}"))
    assert codes[0] != 0 and codes[1] == 1, (codes, logs[0][-2000:], logs[1][-2000:])
    assert "process 1 of 2 failed" in logs[1] and "NoValidDataError" in logs[1]
    assert "has no valid example" in logs[1]
    assert time.time() - started < TIMEOUT_S


# Data parallel (mesh data=8), beside the FSDP runs above: the queue is split over both hosts' devices and
# the parameters are replicated on each.
DECLIP = ("--config.loss=declip", "--config.declip.projection_dim=32", "--config.declip.queue_size=32",
          "--config.total_steps=6", "--config.checkpoint_every_steps=3", "--config.evals.shapes_heldout.every_steps=1000",
          "--config.mesh.data=8", "--config.mesh.fsdp=1")


def text_queue(workdir, step):
    """The `extra` text queue [S, B, E] of checkpoint `step`, whole on the host."""
    import orbax.checkpoint as ocp

    handlers = {"train": ocp.StandardCheckpointHandler()}
    with ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_handlers=handlers) as manager:
        # host arrays shaped as saved: the checkpoint's 2-process layout is not this process's
        target = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), manager.item_metadata(step)["train"])
        train = manager.restore(step, args=ocp.args.Composite(train=ocp.args.StandardRestore(target)))["train"]
    return np.asarray(train["extra"]["text_queue"])


def test_declip_queue_across_hosts_resumes_on_one_process(multihost_config, tmp_path):
    """DeCLIP on 2 x 4 with its text queue (2 slots of the 16-row batch, text embeddings of 128) split over
    both hosts; its step-3 checkpoint (queue full) resumed on 1 x 8: steps 4-6 give the 2-process losses
    (rounding, as above) and the same queue (unit vectors written from those steps: 1e-5)."""
    two_hosts = str(tmp_path / "two")
    run(multihost_config, two_hosts, 2, *DECLIP)
    assert sorted(losses(two_hosts)) == list(range(1, 7))
    elastic = str(tmp_path / "elastic")
    shutil.copytree(two_hosts, elastic)
    shutil.rmtree(os.path.join(elastic, "checkpoints", "6"))
    queue_at_3 = text_queue(elastic, 3)
    assert queue_at_3.shape == (2, 16, 128) and np.allclose(np.linalg.norm(queue_at_3, axis=-1), 1, atol=1e-5)
    run(multihost_config, elastic, 1, *DECLIP)
    assert "resumed from step 3" in open(elastic + "_logs/process_0.log").read()
    got, want = losses(elastic), losses(two_hosts)
    np.testing.assert_allclose([got[s] for s in range(4, 7)], [want[s] for s in range(4, 7)], rtol=LOSS_RTOL)
    np.testing.assert_allclose(text_queue(elastic, 6), text_queue(two_hosts, 6), rtol=0, atol=1e-5)
