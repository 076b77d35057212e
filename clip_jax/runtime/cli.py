"""What the command-line programs (clip_jax.main, clip_jax.evaluate) share: joining the job, quiet logs.

`initialize_distributed()` runs before anything queries devices: from
--coordinator_address/--num_processes/--process_id when given, by
auto-detection under SLURM or on multi-host TPU slices, and not at all on one
machine. `setup_logging()` logs at INFO without Orbax's per-file chatter.
"""
from __future__ import annotations

import logging
import os

import jax
from absl import flags

_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 in a multi-process run.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout_seconds", 100, "Multi-process runs: a process silent this long ends the job."
)


def _multi_host_environment() -> bool:
    """True under a multi-task SLURM job or on a multi-host TPU slice, where jax auto-detects its peers."""
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")


def initialize_distributed() -> None:
    """jax.distributed.initialize where the job spans processes; a no-op on one machine."""
    if _COORDINATOR.value or _NUM_PROCESSES.value:
        jax.distributed.initialize(
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
            heartbeat_timeout_seconds=_HEARTBEAT.value,
        )
    elif _multi_host_environment():
        jax.distributed.initialize(heartbeat_timeout_seconds=_HEARTBEAT.value)


class _LibraryChatter(logging.Filter):
    """Drops INFO lines of checkpointing internals (Orbax logs every file it writes)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or f"{os.sep}orbax{os.sep}" not in record.pathname


def setup_logging() -> None:
    """INFO logs on every handler, without Orbax's INFO lines."""
    logging.getLogger().setLevel(logging.INFO)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_LibraryChatter())
