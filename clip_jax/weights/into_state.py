"""Loading weights into a fresh train state: all of them, or one tower, in either layer layout.

    state = load_into_state(path, state, shardings)                       # config.init_from
    state = load_into_state(path, state, shardings, "visual", "lit.init_image_from")

`path` is converted weights (clip_jax.import_weights), a bare language model
(metadata kind "lm"), another run's workdir (its newest checkpoint), a
transformers CLIPModel / SiglipModel directory or a big_vision SigLIP .npz
(`weights.sources`).
"""
from __future__ import annotations

import logging
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from clip_jax.weights.torch_layout import stack_layers, unstack_layers
from clip_jax.weights.sources import read_weights

log = logging.getLogger("clip_jax.weights.into_state")

# Top-level parameters that only some losses have: the loss's logit scalars, CLIP-Lite's critic heads,
# DeCLIP's training heads.
KEPT_WHEN_ABSENT = ("logit_scale", "logit_bias", "image_critic", "text_critic", "heads")


def _only(collections: dict[str, Any], tower: str | None) -> dict[str, Any]:
    """{'params': ..., 'batch_stats': ...} cut down to `tower`'s subtree in each (all of it when tower is None)."""
    if tower is None:
        return collections
    return {k: {tower: tree[tower]} if tower in tree else {} for k, tree in collections.items()}


def load_into_state(
    path: str, state: dict[str, Any], shardings: dict[str, Any], tower: str | None = None, field: str = "init_from"
) -> dict[str, Any]:
    """Replaces params (and batch_stats) with converted weights or another run's newest checkpoint.

    With `tower` ('visual' or 'text') only that subtree is replaced and the rest keeps its values; weights of
    a bare language model (metadata kind "lm", clip_jax.import_weights --lm) are that 'text' tower whole.
    Layer stacks are converted between the scanned and the plain layout as the model needs;
    a part the weights lack (KEPT_WHEN_ABSENT: CLIP weights for a SigLIP or CLIP-Lite run) keeps its initial value.
    `field` names the config field in errors and logs.
    """
    variables, metadata = read_weights(path)
    if tower is not None and metadata.get("kind") == "lm":
        variables = {k: {tower: v} for k, v in variables.items() if v}
    current = _only({k: state[k] for k in ("params", "batch_stats")}, tower)
    variables = _only({k: variables.get(k, {}) for k in ("params", "batch_stats")}, tower)
    for collection, tree in current.items():  # e.g. CLIP weights for a SigLIP or CLIP-Lite run
        missing = [k for k in KEPT_WHEN_ABSENT if k in tree and k not in variables[collection]]
        if missing:
            variables[collection] = {**variables[collection], **jax.device_get({k: tree[k] for k in missing})}
            log.info("%s: %s has no %s %s; starting them from the config's init", field, path, collection, missing)
    expected = jax.tree.map(lambda x: x.shape, current)
    for layout in (lambda v: v, stack_layers, unstack_layers):
        candidate = {k: layout(v) for k, v in variables.items()}
        if jax.tree.map(lambda x: x.shape, candidate) == expected:
            break
    else:
        want = traverse_util.flatten_dict(expected, sep="/")
        found = traverse_util.flatten_dict(jax.tree.map(lambda x: x.shape, variables), sep="/")
        differ = sorted(k for k in want.keys() | found.keys() if want.get(k) != found.get(k))
        raise ValueError(f"config.{field}: the parameters in {path} do not fit the model; they differ at {differ[:6]}")
    for collection, values in candidate.items():
        values = {**state[collection], **jax.tree.map(lambda x: np.asarray(x, np.float32), values)}
        state[collection] = jax.device_put(values, shardings[collection])
    log.info("%s: initialised %s from %s", field, "parameters" if tower is None else f"the {tower} tower", path)
    return state
