"""Train checkpoints: Orbax CheckpointManager over WORKDIR/checkpoints.

Each step holds four items: `variables` ({'params', 'batch_stats'}, the same
layout `clip_jax.weights.storage` and `import_weights` use, so a run's checkpoints load
as weights anywhere), `train` ({'step', 'opt_state', 'nonfinite'} and, for objectives with
state of their own, 'extra'), `data` (the input
position of every data stream, gathered from all processes, JSON: any process
count that divides the streams can resume it) and `metadata` (model name and
overrides, seed, JSON). The train RNG is not stored: every random draw is a
function of (config.seed, step).

What survives what:

- Saves are asynchronous; a step counts only once Orbax committed it (its
  temporary directory renamed), so a run killed mid-save resumes from the
  newest complete one.
- A resume restores the newest checkpoint that every process reads whole. A
  newer one that cannot be read (a truncated or missing file, unreadable
  metadata) is reported in one line naming it and set aside as STEP.damaged,
  kept for inspection; when none can be read the run ends naming each, rather
  than start again from scratch.
- A save that cannot be written (permissions, a full disk) ends the run with
  one line naming the directory; the checkpoints already there stay as they were.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, NamedTuple

import jax
import orbax.checkpoint as ocp

from clip_jax.runtime import multihost, paths
from clip_jax.runtime.errors import RunError

log = logging.getLogger("clip_jax.training.checkpointing")

State = dict[str, Any]


class CheckpointError(RunError):
    """No checkpoint can be read, or a checkpoint cannot be written."""


class Resume(NamedTuple):
    """Where a run continues: the step, its train state and the input position of its data streams."""

    step: int
    state: State
    data_state: dict[str, Any]


def _split(state: State) -> tuple[dict[str, Any], dict[str, Any]]:
    """(variables, train): the objective's extra state (DeCLIP's queue) goes with the train item where there is one."""
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    train = {"step": state["step"], "opt_state": state["opt_state"], "nonfinite": state["nonfinite"]}
    return variables, {**train, "extra": state["extra"]} if state.get("extra") else train


def _first_line(error: BaseException) -> str:
    """The first line of the error that started `error`'s chain (TensorStore's, under Orbax's wrappers)."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


class Checkpointer:
    """Saves and restores train state, data position and metadata; keeps the newest `keep`."""

    def __init__(self, workdir: str, keep: int):
        self.directory = paths.resolve(workdir) / "checkpoints"
        try:
            self.manager = ocp.CheckpointManager(
                self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
            )
        except OSError as e:
            raise CheckpointError(f"cannot write checkpoints to {self.directory}: {_first_line(e)}") from None

    def steps(self) -> list[int]:
        """The committed checkpoints' steps, oldest first."""
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: State, data_state: dict[str, Any], metadata: dict[str, Any]) -> None:
        """Starts an asynchronous save of `step` (at most one per step); the previous save's failure ends the run."""
        variables, train = _split(state)
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    variables=ocp.args.StandardSave(variables),
                    train=ocp.args.StandardSave(train),
                    data=ocp.args.JsonSave(data_state),
                    metadata=ocp.args.JsonSave(metadata),
                ),
                force=True,
            )
        except Exception as e:  # this save's or the one in flight's: permissions, a full disk, ...
            raise self._write_error(e) from None

    def close(self) -> None:
        """Waits for the save in flight, then ends Orbax's threads; a save that failed ends the run."""
        error = None
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            error = self._write_error(e)
        try:
            self.manager.close()
        except Exception as e:
            error = error or self._write_error(e)
        if error:
            raise error

    def _write_error(self, error: Exception) -> CheckpointError:
        with contextlib.suppress(Exception):  # the steps committed on disk, not the ones Orbax has begun
            self.manager.reload()
        kept = self.steps()
        return CheckpointError(
            f"cannot write checkpoints to {self.directory}: {_first_line(error)}; "
            f"the checkpoints already there ({', '.join(map(str, kept)) or 'none'}) are as they were"
        )

    # -- reading: item by item, without Orbax's cross-process barriers, so a process that fails to read
    # -- its part cannot leave the others waiting; the processes agree on the outcome afterwards.

    def restore(self, step: int, abstract_state: State) -> State:
        """The train state of `step` laid out as `abstract_state` (ShapeDtypeStructs with shardings)."""
        variables, train = _split(abstract_state)
        directory = self.directory / str(step)
        handler = ocp.StandardCheckpointHandler()
        restored_variables = handler.restore(directory / "variables", args=ocp.args.StandardRestore(variables))
        restored_train = handler.restore(directory / "train", args=ocp.args.StandardRestore(train))
        return {"extra": {}, **restored_variables, **restored_train}

    def restore_data(self, step: int) -> dict[str, Any]:
        """The input position of every data stream (`data.merge_states` of all processes' states)."""
        return ocp.JsonCheckpointHandler().restore(self.directory / str(step) / "data")

    def recorded_data_streams(self) -> int | None:
        """The number of data streams the newest readable checkpoint records (None without one)."""
        for step in reversed(self.steps()):
            try:
                return self.restore_data(step).get("fingerprint", {}).get("num_streams")
            except Exception:  # unreadable: restore_newest_intact reports it
                continue
        return None

    def restore_newest_intact(self, abstract_state: State) -> Resume | None:
        """The newest checkpoint every process reads whole; None where there is none.

        Each newer one that some process cannot read is logged in one line and set aside as STEP.damaged
        once an intact one is found. When none can be read the run ends (CheckpointError) naming each.
        """
        damaged: list[tuple[int, str]] = []
        for step in reversed(self.steps()):
            try:
                resume, error = Resume(step, self.restore(step, abstract_state), self.restore_data(step)), None
            except Exception as e:  # a truncated or missing file, unreadable metadata: whatever a read raises
                resume, error = None, _first_line(e)
            errors = [e for e in multihost.allgather_json(error) if e]  # every process's outcome: all agree
            if not errors:
                self._set_aside(damaged)
                return resume
            damaged.append((step, errors[0]))
        if damaged:
            raise CheckpointError(
                f"no checkpoint in {self.directory} can be read: "
                + "; ".join(f"step {step}: {error}" for step, error in damaged)
            )
        return None

    def _set_aside(self, damaged: list[tuple[int, str]]) -> None:
        """Renames each damaged step's directory to STEP.damaged (process 0), so new saves can take its step."""
        if not damaged:
            return
        names = []
        if jax.process_index() == 0:
            for step, _ in damaged:
                target, copy = self.directory / f"{step}.damaged", 1
                while target.exists():
                    copy += 1
                    target = self.directory / f"{step}.damaged.{copy}"
                (self.directory / str(step)).rename(target)
                names.append(target.name)
        names = multihost.allgather_json(names)[0]  # after the renames: every process re-lists the steps
        for (step, error), name in zip(damaged, names, strict=True):
            log.error("checkpoint %d in %s cannot be read (%s); kept as %s", step, self.directory, error, name)
        self.manager.reload()

