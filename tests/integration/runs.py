"""Runs of `python -m clip_jax.main` for the integration tier: one process, or a cluster of several.

TEST_CONFIG is configs/tiny.py at the smallest size that still learns: ViT-Tiny-8 with one block of
width 128 per tower, batch 64, 40 steps (about 30 s on 2 cores, most of it start-up and compiling;
retrieval recall@5 on 45 fresh images 0.31 / 0.33 / 0.67 for seeds 0 / 1 / 2, chance 0.11; a width
of 64 stays at the loss of tied logits). `conftest.trained_run` trains it once per session for every
test that needs a trained model.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from clip_jax.weights.storage import load_variables

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT_S = 600  # any one run; a run still going after this is a hang

TEST_CONFIG = f'''
import runpy
import ml_collections


def get_config():
    config = runpy.run_path({os.path.join(REPO, "configs", "tiny.py")!r})["get_config"]()
    config.model_overrides = ml_collections.ConfigDict(dict(vision=dict(layers=1), text=dict(layers=1, context_length=24)))
    config.total_steps = 40
    config.optimizer.warmup_steps = 4
    config.checkpoint_every_steps = 5
    config.log_every_steps = 5
    config.evals.shapes_heldout.data = "shapes:eval#size=32&n=48"
    config.evals.shapes_heldout.every_steps = 40
    del config.evals["shapes_val"]
    return config
'''


def main_command(config_file: str, workdir: str, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "clip_jax.main", f"--config={config_file}", f"--workdir={workdir}", *overrides]


def run_main(
    config_file: str, workdir: str, *overrides: str, cwd: str = REPO, timeout: float = TIMEOUT_S,
) -> subprocess.CompletedProcess:
    """One process to the end; fails the test with the end of its log unless it exits 0 within `timeout` s."""
    result = subprocess.run(
        main_command(config_file, workdir, *overrides), capture_output=True, text=True, cwd=cwd, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def final_params(workdir: str, step: int | None = None):
    """(params, metadata) of the run's newest (or given) checkpoint."""
    variables, metadata = load_variables(os.path.join(workdir, "checkpoints"), step)
    return variables["params"], metadata


def records(workdir: str) -> list[dict]:
    """metrics.jsonl of a run, one dict a line."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def losses(workdir: str) -> dict[int, float]:
    """step -> logged training loss."""
    return {r["step"]: r["loss"] for r in records(workdir) if "loss" in r}


def checkpoint_steps(workdir: str) -> list[int]:
    directory = os.path.join(workdir, "checkpoints")
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(directory) else []


def wait_for_checkpoint(workdir: str, step: int, processes: list[subprocess.Popen]) -> None:
    """Until checkpoint `step` is committed (Orbax renames its temporary directory last)."""
    deadline = time.time() + TIMEOUT_S
    while step not in checkpoint_steps(workdir) and time.time() < deadline:
        assert all(p.poll() is None for p in processes), "a process ended before the checkpoint"
        time.sleep(0.02)
    assert step in checkpoint_steps(workdir)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_env(devices_per_process: int) -> dict[str, str]:
    """The environment of one process of a loopback cluster: its simulated devices, gloo collectives."""
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}",
            "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"}


def start_cluster(command: list[str], num_processes: int, log_dir: str, devices: int = 8) -> list[subprocess.Popen]:
    """`command` as num_processes processes of one JAX cluster sharing `devices` simulated devices (one
    process alone gets them all, without cluster flags); stderr to log_dir/process_<i>.log."""
    os.makedirs(log_dir, exist_ok=True)
    port = free_port()
    processes = []
    for i in range(num_processes):
        cluster = [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}",
                   f"--process_id={i}"] if num_processes > 1 else []
        with open(os.path.join(log_dir, f"process_{i}.log"), "w") as log:
            processes.append(subprocess.Popen(
                [*command, *cluster], stdout=subprocess.DEVNULL, stderr=log, cwd=REPO,
                env=cluster_env(devices // num_processes),
            ))
    return processes


def wait_cluster(processes: list[subprocess.Popen], log_dir: str) -> tuple[list[int], list[str]]:
    """Exit codes of all processes and their logs; kills them all on a time-out (a hang fails the test)."""
    deadline = time.time() + TIMEOUT_S
    try:
        codes = [p.wait(timeout=max(deadline - time.time(), 1)) for p in processes]
    except subprocess.TimeoutExpired:
        for p in processes:
            p.kill()
        pytest.fail(f"processes still running after {TIMEOUT_S} s: a hang")
    logs = []
    for i in range(len(processes)):
        with open(os.path.join(log_dir, f"process_{i}.log")) as f:
            logs.append(f.read())
    return codes, logs
