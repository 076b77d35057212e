r"""Entry point: trains a CLIP-style model from a config file.

    python -m clip_jax.main --config=configs/vit_b32.py --workdir=/path/run \
        [--config.batch_size=4096 --config.mesh.fsdp=8 ...]

Multi-process runs (TPU pods, SLURM, any cluster) call `jax.distributed.initialize`:
from --coordinator_address/--num_processes/--process_id when given, by
auto-detection under SLURM or on multi-host TPU slices, and not at all on one
machine. The config is validated before anything is compiled.
"""
from __future__ import annotations

import logging
import os

import jax
from absl import app, flags
from ml_collections import config_flags

from clip_jax.config import validate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, TensorBoard events, metrics.jsonl.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 in a multi-process run.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
flags.mark_flags_as_required(["config", "workdir"])


def _multi_host_environment() -> bool:
    """True under a multi-task SLURM job or on a multi-host TPU slice, where jax auto-detects its peers."""
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")


def initialize_distributed() -> None:
    """jax.distributed.initialize where the run spans processes; a no-op on one machine."""
    if _COORDINATOR.value or _NUM_PROCESSES.value:
        jax.distributed.initialize(
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    elif _multi_host_environment():
        jax.distributed.initialize()


class _LibraryChatter(logging.Filter):
    """Drops INFO lines of checkpointing internals (Orbax logs every file it writes)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or f"{os.sep}orbax{os.sep}" not in record.pathname


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    try:
        validate(config)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    logging.getLogger().setLevel(logging.INFO)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_LibraryChatter())
    initialize_distributed()
    from clip_jax.train import train_and_evaluate  # after jax.distributed: it queries devices

    logging.info("process %d of %d, %d devices; config:\n%s", jax.process_index(), jax.process_count(),
                 jax.device_count(), config)
    train_and_evaluate(config, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
