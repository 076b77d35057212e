"""CLIP's symmetric InfoNCE loss over the global batch, dense or blockwise."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from clip_jax.losses.common import (AxisName, Impl, all_gather, as_embeddings, axis_size, pair_logits,
                                    psum)
from clip_jax.losses.ring import TileRule, blockwise_pair_loss


def _lse_init(template: jax.Array):
    empty = jnp.full_like(template, -jnp.inf)
    return empty, empty


def _lse_update(logits: jax.Array, row: jax.Array, col: jax.Array):
    return (jnp.logaddexp(row, jax.nn.logsumexp(logits, axis=1)),
            jnp.logaddexp(col, jax.nn.logsumexp(logits, axis=0)))


def _lse_total(row: jax.Array, col: jax.Array) -> jax.Array:
    return (jnp.sum(row) + jnp.sum(col)) / 2


def _lse_dlogits(logits: jax.Array, row: jax.Array, col: jax.Array) -> jax.Array:
    # Row and column softmaxes from the saved log-normalisers.
    return (jnp.exp(logits - row[:, None]) + jnp.exp(logits - col[None, :])) / 2


# Row statistics: each image's logsumexp over all texts (online, tile by tile);
# column statistics: each text's logsumexp over all images (travelling with it).
INFONCE_RULE = TileRule(init=_lse_init, update=_lse_update, total=_lse_total, dlogits=_lse_dlogits)


def clip_loss(
    image_embeds: jax.Array,
    text_embeds: jax.Array,
    logit_scale: jax.Array | float,
    axis_name: AxisName = None,
    *,
    impl: Impl = "all_gather",
    block_size: int = 1024,
) -> jax.Array:
    """CLIP's symmetric InfoNCE: (CE(image->text) + CE(text->image)) / 2, mean over N.

    With logits L = logit_scale * X @ Y.T [N, N] over the global batch (image i
    matches text i):

        loss = 1/(2N) sum_i [logsumexp_j L_ij - L_ii] + [logsumexp_j L_ji - L_ii]

    Args:
      image_embeds: L2-normalized local image embeddings [n, d].
      text_embeds: L2-normalized local text embeddings [n, d].
      logit_scale: the multiplier itself (exp of the learned parameter), scalar.
      axis_name: None on one device (N = n); inside `jax.shard_map`, the mesh
        axis name(s) the batch is split over, e.g. "data" or ("data", "fsdp")
        (N = n * devices, every device's texts are negatives for every image).
      impl: "all_gather" gathers the global embeddings and holds two [n, N]
        logit matrices; "blockwise" passes text blocks around a ring of devices
        and tiles inside each, holding at most an [n, block_size] tile forward
        and backward (same values and gradients).
      block_size: texts per tile for "blockwise"; must divide n (or be >= n).

    Returns:
      The scalar loss of the global batch, float32, identical on every device;
      its gradients w.r.t. the local inputs are the slices of the global ones.
    """
    x, y = as_embeddings(image_embeds, text_embeds)
    scaled = jnp.asarray(logit_scale, jnp.float32) * x
    if impl == "blockwise":
        return blockwise_pair_loss(INFONCE_RULE, scaled, y, None, axis_name=axis_name,
                                   block_size=block_size)
    if impl != "all_gather":
        raise ValueError(f"impl must be 'all_gather' or 'blockwise', got {impl!r}")
    i2t = pair_logits(scaled, all_gather(y, axis_name))  # [n, N]
    t2i = pair_logits(y, all_gather(scaled, axis_name))  # [n, N]
    diagonal = jnp.sum(scaled * y, axis=1)  # [n]
    local = jnp.sum(jax.nn.logsumexp(i2t, axis=1) + jax.nn.logsumexp(t2i, axis=1) - 2 * diagonal)
    return psum(local, axis_name) / (2 * x.shape[0] * axis_size(axis_name))
