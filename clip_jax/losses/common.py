"""Shared helpers: batch-axis collectives that are identities on one device, float32 logits.

Every loss takes an optional `axis_name`: None on one device, or the mesh axis
name(s) the batch is split over (a str or a tuple such as ("data", "fsdp")) when
called on local shards inside `jax.shard_map`. The helpers below hide that
difference so each loss is written once. Device order is the linear index of
`jax.lax.axis_index(axis_name)`, the order in which `P(axis_name)` splits a batch.
"""
from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

AxisName = str | tuple[str, ...] | None
Impl = Literal["all_gather", "blockwise"]  # dense [n, N] logits, or the memory-flat ring


def axis_size(axis_name: AxisName) -> int:
    """Number of devices the batch is split over (1 without an axis)."""
    return 1 if axis_name is None else jax.lax.axis_size(axis_name)


def axis_index(axis_name: AxisName) -> jax.Array | int:
    """This device's position along the batch axes (0 without an axis)."""
    return 0 if axis_name is None else jax.lax.axis_index(axis_name)


def psum(x, axis_name: AxisName):
    """Sum over devices; identity without an axis."""
    return x if axis_name is None else jax.lax.psum(x, axis_name)


def all_gather(x: jax.Array, axis_name: AxisName) -> jax.Array:
    """Concatenates the local [n, ...] blocks into the global [N, ...] batch."""
    return x if axis_name is None else jax.lax.all_gather(x, axis_name, tiled=True)


def from_next(x, axis_name: AxisName):
    """Each device receives the pytree `x` of the next device (cyclically)."""
    size = axis_size(axis_name)
    if size == 1:
        return x
    perm = [(src, (src - 1) % size) for src in range(size)]
    return jax.tree.map(lambda a: jax.lax.ppermute(a, axis_name, perm), x)


def as_embeddings(image_embeds: jax.Array, text_embeds: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Checks that both are [n, d] and casts them to float32."""
    if image_embeds.ndim != 2 or image_embeds.shape != text_embeds.shape:
        raise ValueError(
            "image_embeds and text_embeds must both be [n, d]; got "
            f"{image_embeds.shape} and {text_embeds.shape}")
    return image_embeds.astype(jnp.float32), text_embeds.astype(jnp.float32)


def pair_logits(rows: jax.Array, cols: jax.Array, row_bias: jax.Array | None = None) -> jax.Array:
    """[m, d] x [c, d] (+ bias [m] or scalar) -> float32 logits [m, c] = rows @ cols.T + bias."""
    logits = jnp.einsum("md,cd->mc", rows, cols, preferred_element_type=jnp.float32)
    if row_bias is None:
        return logits
    return logits + jnp.reshape(row_bias, (-1, 1) if jnp.ndim(row_bias) else ())
