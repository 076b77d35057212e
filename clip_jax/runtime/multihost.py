"""What the processes of a `jax.distributed` run agree on, and how one process's failure ends them all.

- `allgather_json`: every process's JSON-able value, on every process (checkpointed input positions).
- `sum_over_processes`: integer counts summed over processes (skipped records).
- `Preemption`: SIGTERM turned into a step at which every process stops. One
  process: a flag. Several: JAX's preemption sync manager, which the
  coordination service notifies of a SIGTERM to any process and which names
  a step every process reaches (`multihost_utils.reached_preemption_sync_point`)
  without a cross-host sync per step.
- `exit_on_failure`: a process that raises logs the error (a `RunError`: its one line) and exits at once
  with status 1, skipping `jax.distributed`'s shutdown barrier (where it
  would wait forever for peers stuck in a collective). The coordination
  service then misses its heartbeats and ends every other process with a
  non-zero status within the heartbeat timeout: the job fails, never hangs.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils

from clip_jax.runtime.errors import RunError

log = logging.getLogger("clip_jax.runtime.multihost")
T = TypeVar("T")


def allgather_json(value: Any) -> list[Any]:
    """[value of process 0, value of process 1, ...] on every process; a collective."""
    if jax.process_count() == 1:
        return [value]
    encoded = np.frombuffer(json.dumps(value).encode("utf-8"), np.uint8)
    lengths = multihost_utils.process_allgather(np.array([len(encoded)], np.int32)).reshape(-1)
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[: len(encoded)] = encoded
    gathered = np.asarray(multihost_utils.process_allgather(padded))
    return [json.loads(row[:n].tobytes().decode("utf-8")) for row, n in zip(gathered, lengths, strict=True)]


def sum_over_processes(counts: Mapping[str, int]) -> dict[str, int]:
    """Each count summed over all processes (every process passes the same keys); a collective."""
    if jax.process_count() == 1:
        return dict(counts)
    keys = sorted(counts)
    totals = np.asarray(multihost_utils.process_allgather(np.array([counts[k] for k in keys], np.int32))).sum(axis=0)
    return {k: int(v) for k, v in zip(keys, totals, strict=True)}


class Preemption:
    """Whether to save and stop after a step: agreed on by every process, checked every step."""

    def __init__(self) -> None:
        self.requested = False
        self._distributed = jax.process_count() > 1
        self._previous = None if self._distributed else signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning("SIGTERM: saving a checkpoint and stopping after this step")
        self.requested = True

    def should_stop(self, step: int) -> bool:
        """Call after every step with the step just completed, on every process."""
        if not self._distributed:
            return self.requested
        if multihost_utils.reached_preemption_sync_point(step):
            log.warning("preemption notice: every process saves a checkpoint at step %d and stops", step)
            return True
        return False

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def exit_on_failure(fn: Callable[[], T]) -> T:
    """fn(). A RunError ends this process at once with its one line, `error: <message>`, last on stderr and
    status 1; in a multi-process run any other exception is logged and ends it the same way.

    At once (`os._exit`, after flushing the logs): the run has closed its checkpoints by then, and neither
    `jax.distributed`'s shutdown barrier nor threads left by Orbax, TensorStore or tf.data may hold the
    exit or print after the message.
    """
    try:
        return fn()
    except RunError as e:
        _exit_now(f"error: {e}")
    except BaseException:
        if jax.process_count() == 1:
            raise
        log.exception("process %d of %d failed; ending the job", jax.process_index(), jax.process_count())
        _exit_now()


def _exit_now(message: str = "") -> NoReturn:
    """Flushes the logs, points stdout and stderr at /dev/null so that no other thread's output (a
    traceback of a save the error interrupted, say) can follow, then writes `message` on a line of its own
    on the saved stderr (after a newline: another thread may have left a line unfinished) and exits with
    status 1."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    stderr = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    if message:
        os.write(stderr, f"\n{message}\n".encode())
    os._exit(1)
