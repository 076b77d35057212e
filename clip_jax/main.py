r"""Entry point: trains a CLIP-style model from a config file.

    python -m clip_jax.main --config=configs/vit_b32.py --workdir=/path/run \
        [--config.batch_size=4096 --config.mesh.fsdp=8 ...]

Without --workdir the run goes to runs/<config file name> under the current
directory. Multi-process runs (TPU pods, SLURM, any cluster) call
`jax.distributed.initialize`: from --coordinator_address/--num_processes/
--process_id when given, by auto-detection under SLURM or on multi-host TPU
slices, and not at all on one machine. A process that fails logs its error and
exits with status 1 at once; the others are ended by JAX's coordination
service within --heartbeat_timeout_seconds, so a failing job never hangs.
The config is validated, and the training data opened, before anything is
compiled; a bad field or a missing source ends the run with one line naming it.
On Linux the program first restarts itself once with glibc's huge-page malloc
(`clip_jax.runtime.host_memory`; CLIP_JAX_HUGE_PAGES=0 turns it off).
"""
from __future__ import annotations

from clip_jax.runtime import host_memory

if __name__ == "__main__":  # first: what is imported below would be imported again after the restart
    host_memory.reexec_with_huge_pages()

import logging
import os

import jax
from absl import app, flags
from ml_collections import config_flags

from clip_jax.config.validation import validate
from clip_jax.runtime import multihost
from clip_jax.runtime.cli import initialize_distributed, setup_logging

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory (local or gs://...): checkpoints, TensorBoard events, metrics.jsonl. "
    "Default: runs/<config file name>."
)
flags.mark_flags_as_required(["config"])


def default_workdir(config_path: str) -> str:
    """runs/<config file name without .py>."""
    return os.path.join("runs", os.path.splitext(os.path.basename(config_path))[0])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    try:
        validate(config)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    setup_logging()
    initialize_distributed()
    from clip_jax.training.loop import train_and_evaluate  # after jax.distributed: it queries devices

    workdir = _WORKDIR.value or default_workdir(config_flags.get_config_filename(flags.FLAGS["config"]))
    logging.info("process %d of %d, %d devices; workdir %s; config:\n%s", jax.process_index(), jax.process_count(),
                 jax.device_count(), workdir, config)
    # A RunError (a bad field, an unreadable checkpoint, a full disk, a diverged run) ends it in one line.
    multihost.exit_on_failure(lambda: train_and_evaluate(config, workdir))


if __name__ == "__main__":
    app.run(main)
