"""Train checkpoints: Orbax CheckpointManager over WORKDIR/checkpoints.

Each step holds four items: `variables` ({'params', 'batch_stats'}, the same
layout `clip_jax.weights.storage` and `import_weights` use, so a run's checkpoints load
as weights anywhere), `train` ({'step', 'opt_state'} and, for objectives with
state of their own, 'extra'), `data` (the input
position of every data stream, gathered from all processes, JSON: any process
count that divides the streams can resume it) and `metadata` (model name and
overrides, seed, JSON). Saves are asynchronous; a step counts only once Orbax committed it, so a
run killed mid-save resumes from the newest complete one. The train RNG is not
stored: every random draw is a function of (config.seed, step).
"""
from __future__ import annotations

from typing import Any

import orbax.checkpoint as ocp

from clip_jax.runtime import paths

State = dict[str, Any]


def _split(state: State) -> tuple[dict[str, Any], dict[str, Any]]:
    """(variables, train): the objective's extra state (DeCLIP's queue) goes with the train item where there is one."""
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    train = {"step": state["step"], "opt_state": state["opt_state"]}
    return variables, {**train, "extra": state["extra"]} if state.get("extra") else train


class Checkpointer:
    """Saves and restores train state, data position and metadata; keeps the newest `keep`."""

    def __init__(self, workdir: str, keep: int):
        self.directory = paths.resolve(workdir) / "checkpoints"
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: State, data_state: dict[str, Any], metadata: dict[str, Any]) -> None:
        """Starts an asynchronous save of `step` (at most one per step)."""
        variables, train = _split(state)
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

    def restore(self, step: int, abstract_state: State) -> State:
        """The train state laid out as `abstract_state` (ShapeDtypeStructs with shardings)."""
        variables, train = _split(abstract_state)
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                variables=ocp.args.StandardRestore(variables), train=ocp.args.StandardRestore(train)
            ),
        )
        return {"extra": {}, **restored.variables, **restored.train}

    def restore_data(self, step: int) -> dict[str, Any]:
        """The input position of every data stream (`data.merge_states` of all processes' states)."""
        return self.manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore())).data

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()

