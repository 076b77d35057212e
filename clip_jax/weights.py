"""Model weights on disk: an Orbax checkpoint of variables plus the model it belongs to.

Layout: an Orbax CheckpointManager directory whose step holds two items,
`variables` ({'params', maybe 'batch_stats'}) and `metadata` (JSON with the
model name and overrides), so `load_model` rebuilds the module without being
told what it is.
"""
from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp

from clip_jax.models import CLIP, create_model


def save_variables(directory: str, variables: dict[str, Any], metadata: dict[str, Any], step: int = 0) -> None:
    """Writes variables and JSON metadata as step `step` of an Orbax checkpoint in `directory`."""
    with ocp.CheckpointManager(os.path.abspath(directory)) as manager:
        manager.save(
            step,
            args=ocp.args.Composite(variables=ocp.args.StandardSave(variables), metadata=ocp.args.JsonSave(metadata)),
        )
        manager.wait_until_finished()


def load_variables(directory: str, step: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(variables as numpy arrays, metadata) from the newest (or given) step in `directory`."""
    directory = os.path.abspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoint directory at {directory}")
    with ocp.CheckpointManager(directory) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {directory}")
        restored = manager.restore(
            step, args=ocp.args.Composite(variables=ocp.args.StandardRestore(), metadata=ocp.args.JsonRestore())
        )
    return restored.variables, restored.metadata


def load_model(directory: str, **overrides: Any) -> tuple[CLIP, dict[str, Any]]:
    """(model, variables) from a directory written by `save_variables` (e.g. by import_weights).

    overrides (dtype, remat_policy, ...) are applied on top of the saved ones.
    """
    variables, metadata = load_variables(directory)
    model = create_model(metadata["model"], **{**metadata.get("overrides", {}), **overrides})
    return model, variables
