"""Health metrics of a train step, per tower: computed in the step, fetched on log steps only.

For each of `image` (params['visual']), `text` (params['text']) and `heads`
(every other top-level parameter: projections, logit scale and bias,
critics, LiMBeR's projection), where the model has it:

    grad_norm/<tower>      L2 norm of the gradient, before clipping
    param_norm/<tower>     L2 norm of the parameters after the step's update
    update_ratio/<tower>   ||update|| / ||parameters||: the relative size of the step's change

and over all of them `grad_norm` and `param_norm`. Each tree is reduced once,
to a sum of squares per tower; the global norms add those up.
What a healthy run shows is in docs/training.md ("Long runs").
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

# Top-level parameter subtree -> tower name; every other top-level parameter is one of the "heads".
TOWERS = {"visual": "image", "text": "text"}


def squares_by_tower(tree: dict[str, Any]) -> dict[str, jax.Array]:
    """{tower: sum of the squares of its leaves} of a parameter-shaped tree, for the towers it has."""
    sums: dict[str, jax.Array] = {}
    for name, subtree in tree.items():
        total = sum(jnp.sum(jnp.square(leaf.astype(jnp.float32))) for leaf in jax.tree.leaves(subtree))
        tower = TOWERS.get(name, "heads")
        sums[tower] = sums.get(tower, 0.0) + total
    return sums


def norms(grads: Any, updates: Any, params: Any) -> dict[str, jax.Array]:
    """grad_norm and param_norm, and per tower grad_norm/, param_norm/ and update_ratio/ (scalars)."""
    grad_sq, update_sq, param_sq = (squares_by_tower(tree) for tree in (grads, updates, params))
    metrics = {"grad_norm": jnp.sqrt(sum(grad_sq.values())), "param_norm": jnp.sqrt(sum(param_sq.values()))}
    for tower in param_sq:
        metrics[f"grad_norm/{tower}"] = jnp.sqrt(grad_sq[tower])
        metrics[f"param_norm/{tower}"] = jnp.sqrt(param_sq[tower])
        metrics[f"update_ratio/{tower}"] = jnp.sqrt(update_sq[tower] / jnp.maximum(param_sq[tower], jnp.finfo(jnp.float32).tiny))
    return metrics
