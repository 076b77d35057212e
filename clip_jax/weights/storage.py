"""Model weights on disk: an Orbax checkpoint of variables plus the model it belongs to.

Layout: an Orbax CheckpointManager directory whose step holds two items,
`variables` ({'params', maybe 'batch_stats'}) and `metadata` (JSON with the
model's kind, name and overrides), so `load_model` rebuilds the module without
being told what it is. Kinds: "clip" (also metadata without a kind: every
checkpoint written before kinds existed), "lm" (a bare `clip_jax.lm.CausalLM`,
clip_jax.import_weights --lm), "causal_lm" and "limber" (`clip_jax.models.limber`'s
CaptionLM and Limber, written by training runs with those losses).
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from clip_jax.models import CLIP, create_model
from clip_jax.runtime import paths


def save_variables(
    directory: epath.PathLike, variables: dict[str, Any], metadata: dict[str, Any], step: int = 0
) -> None:
    """Writes variables and JSON metadata as step `step` of an Orbax checkpoint in `directory`."""
    with ocp.CheckpointManager(paths.resolve(directory)) as manager:
        manager.save(
            step,
            args=ocp.args.Composite(variables=ocp.args.StandardSave(variables), metadata=ocp.args.JsonSave(metadata)),
        )
        manager.wait_until_finished()


def load_variables(directory: epath.PathLike, step: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(variables as host numpy arrays, metadata) from the newest (or given) step in `directory`.

    `directory` is a weights directory (`save_variables`, import_weights) or a
    training run's workdir (its `checkpoints/`). Works whatever devices or
    processes wrote the checkpoint: arrays come back whole, on the host, for
    any topology.
    """
    directory = paths.resolve(directory)
    if (directory / "checkpoints").is_dir():
        directory = directory / "checkpoints"
    if not directory.is_dir():
        raise FileNotFoundError(f"no checkpoint directory at {directory}")
    handlers = {
        "variables": ocp.StandardCheckpointHandler(),
        "metadata": ocp.JsonCheckpointHandler(),
        "train": ocp.StandardCheckpointHandler(),
        "data": ocp.JsonCheckpointHandler(),
    }
    with ocp.CheckpointManager(directory, item_handlers=handlers) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {directory}")
        shapes = manager.item_metadata(step)["variables"]
        target = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes)  # zero pages cost nothing until written
        restored = manager.restore(
            step, args=ocp.args.Composite(variables=ocp.args.StandardRestore(target), metadata=ocp.args.JsonRestore())
        )
    return restored.variables, restored.metadata


def load_model(directory: epath.PathLike, **overrides: Any) -> tuple[CLIP, dict[str, Any]]:
    """(model, variables) from a weights directory (import_weights) or a training run's workdir.

    overrides (dtype, remat_policy, ...) are applied on top of the saved ones.
    """
    variables, metadata = load_variables(directory)
    return model_from_metadata(metadata, **overrides), variables


def model_from_metadata(metadata: dict[str, Any], **overrides: Any) -> Any:
    """The module a checkpoint's metadata names ("kind", "model", "overrides"), with `overrides` on top."""
    kind = metadata.get("kind", "clip")
    overrides = {**metadata.get("overrides", {}), **overrides}
    if kind == "clip":
        return create_model(metadata["model"], **overrides)
    from clip_jax.lm import create_lm  # not at import: clip_jax.lm imports clip_jax.models
    from clip_jax.models import limber

    if kind == "lm":
        return create_lm(metadata["model"], **overrides)
    if kind == "causal_lm":
        return limber.create_caption_lm(metadata["model"], **overrides)
    if kind == "limber":
        return limber.create_limber(metadata["model"], **overrides)
    raise ValueError(f"unknown model kind {kind!r} in the checkpoint's metadata")
