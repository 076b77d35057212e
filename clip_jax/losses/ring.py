"""Ring machinery for memory-flat pairwise losses over the global [N, N] logit matrix.

Each device keeps its n local images and passes its n local texts around the ring
of devices with `ppermute`; inside a device the travelling text block is cut into
chunks of `block_size`, so at most an [n, block_size] tile of logits exists at any
time. `ring_fold` visits every (local images x chunk of global texts) tile once,
folding per-row state that stays home and per-text state that travels with the
texts and comes back to their owner.

`blockwise_pair_loss` builds a loss on it from a `TileRule` (the row and column
statistics a loss needs). Its `jax.custom_vjp` saves only [n] statistics and
recomputes each tile in the backward pass, so forward and backward stay
O(n * block_size) in memory while values and gradients equal the dense ones.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from clip_jax.losses.common import AxisName, axis_index, axis_size, from_next, pair_logits, psum

Stats = Any  # a pytree of arrays with a leading [n] (or [c] within a tile) axis
TileFn = Callable[[jax.Array, jax.Array, Any, Any], tuple[Any, Any]]


def _chunk_size(n: int, block_size: int) -> int:
    """The text chunk used for a local batch of n: block_size, capped at n; must divide n."""
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    chunk = min(block_size, n)
    if n % chunk:
        raise ValueError(
            f"block_size={block_size} must divide the local batch size n={n} (or be >= n); "
            f"pick a divisor of {n}")
    return chunk


def ring_fold(
    tile_fn: TileFn,
    texts: jax.Array,
    carry: Any,
    travel: Stats,
    *,
    axis_name: AxisName,
    block_size: int,
) -> tuple[Any, Stats]:
    """Folds `tile_fn` over every chunk of the global texts, all devices in a ring.

    Args:
      tile_fn: (text_chunk [c, d], col_start, carry, travel_chunk [c, ...]) ->
        (carry, travel_chunk). `col_start` is the global index of the chunk's first
        text; the function closes over whatever it needs of the local images.
      texts: local texts [n, d]; they travel around the ring.
      carry: state that stays on this device (e.g. per-image statistics [n]).
      travel: per-text state [n, ...] that travels with the texts.
      axis_name: batch mesh axes inside `jax.shard_map`, or None for one device.
      block_size: texts per tile; must divide n (or be >= n).

    Returns:
      (carry, travel), carry having seen all N texts and travel, back home, all
      N images' tiles of the local texts.
    """
    n = texts.shape[0]
    chunk = _chunk_size(n, block_size)
    num_chunks = n // chunk
    devices = axis_size(axis_name)
    me = axis_index(axis_name)

    def split(a):
        return a.reshape(num_chunks, chunk, *a.shape[1:])

    def merge(a):
        return a.reshape(n, *a.shape[2:])

    def visit(carry, texts, travel, owner):
        def body(carry, xs):
            k, text_chunk, travel_chunk = xs
            return tile_fn(text_chunk, owner * n + k * chunk, carry, travel_chunk)

        xs = (jnp.arange(num_chunks), split(texts), jax.tree.map(split, travel))
        carry, travel = jax.lax.scan(body, carry, xs)
        return carry, jax.tree.map(merge, travel)

    def step(state, s):
        carry, texts, travel = state
        next_texts = from_next(texts, axis_name)  # independent of this step's tiles: can overlap them
        carry, travel = visit(carry, texts, travel, (me + s) % devices)
        return (carry, next_texts, from_next(travel, axis_name)), None

    (carry, _, travel), _ = jax.lax.scan(step, (carry, texts, travel), jnp.arange(devices))
    return carry, travel


class TileRule(NamedTuple):
    """How a pairwise loss reduces the logits L [N, N] (rows images, columns texts).

    The loss is (total(row, col) - sum_i L_ii) / N, summed over devices, where
    `row` [n] and `col` [n] are statistics of the local images' rows and local
    texts' columns, accumulated tile by tile.

    init: template [n] -> (row, col) initial statistics (built like the template,
      so they vary over the same mesh axes).
    update: (logits [n, c], row [n], col [c]) -> (row, col) after seeing the tile.
    total: (row [n], col [n]) -> this device's sum of loss terms (scalar).
    dlogits: (logits [n, c], row [n], col [c]) with final statistics ->
      d total / d logits for the tile [n, c].
    """

    init: Callable[[jax.Array], tuple[Stats, Stats]]
    update: Callable[[jax.Array, Stats, Stats], tuple[Stats, Stats]]
    total: Callable[[Stats, Stats], jax.Array]
    dlogits: Callable[[jax.Array, Stats, Stats], jax.Array]


def blockwise_pair_loss(
    rule: TileRule,
    scaled_images: jax.Array,
    texts: jax.Array,
    row_bias: jax.Array | None,
    *,
    axis_name: AxisName,
    block_size: int,
) -> jax.Array:
    """Global pairwise loss with logits L = scaled_images @ all_texts.T + row_bias.

    Args:
      rule: the loss's `TileRule`.
      scaled_images: logit_scale * local image embeddings [n, d], float32.
      texts: local text embeddings [n, d], float32.
      row_bias: per-image bias [n] or None.
      axis_name: batch mesh axes inside `jax.shard_map`, or None for one device.
      block_size: texts per tile.

    Returns:
      The loss of the whole global batch (scalar, identical on every device).
    """
    # The psum stays outside the custom_vjp: its transpose hands every device the same
    # cotangent, with or without shard_map's check_vma.
    return psum(_pair_loss(rule, axis_name, block_size, scaled_images, texts, row_bias), axis_name)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _pair_loss(rule, axis_name, block_size, scaled_images, texts, row_bias):
    return _pair_loss_fwd(rule, axis_name, block_size, scaled_images, texts, row_bias)[0]


def _pair_loss_fwd(rule, axis_name, block_size, scaled_images, texts, row_bias):
    def tile(text_chunk, col_start, row, col_chunk):
        return rule.update(pair_logits(scaled_images, text_chunk, row_bias), row, col_chunk)

    row, col = rule.init(scaled_images[:, 0])
    row, col = ring_fold(tile, texts, row, col, axis_name=axis_name, block_size=block_size)
    diagonal = jnp.sum(scaled_images * texts, axis=1)  # L_ii - bias_i [n]
    if row_bias is not None:
        diagonal = diagonal + row_bias
    global_batch = texts.shape[0] * axis_size(axis_name)
    local_terms = (rule.total(row, col) - jnp.sum(diagonal)) / global_batch
    return local_terms, (scaled_images, texts, row_bias, row, col)


def _pair_loss_bwd(rule, axis_name, block_size, residuals, g):
    scaled_images, texts, row_bias, row, col = residuals
    # g, the cotangent of the psum'd loss, is the same on every device, so each device
    # scales the tiles it computes (which feed other devices' terms too) by g / N.
    scale = g / (texts.shape[0] * axis_size(axis_name))

    def tile(text_chunk, col_start, carry, travel_chunk):
        d_images, d_bias = carry
        col_chunk, d_texts = travel_chunk
        logits = pair_logits(scaled_images, text_chunk, row_bias)
        d_logits = scale * rule.dlogits(logits, row, col_chunk)  # [n, c]
        d_images = d_images + d_logits @ text_chunk
        d_texts = d_texts + d_logits.T @ scaled_images
        if d_bias is not None:
            d_bias = d_bias + jnp.sum(d_logits, axis=1)
        return (d_images, d_bias), (col_chunk, d_texts)

    d_bias = None if row_bias is None else jnp.zeros_like(row_bias)
    carry = (jnp.zeros_like(scaled_images), d_bias)
    (d_images, d_bias), (_, d_texts) = ring_fold(
        tile, texts, carry, (col, jnp.zeros_like(texts)), axis_name=axis_name, block_size=block_size)
    # The -sum_i L_ii / N term lives on the device that owns pair i.
    d_images = d_images - scale * texts
    d_texts = d_texts - scale * scaled_images
    if d_bias is not None:
        d_bias = d_bias - scale
    return d_images, d_texts, d_bias


_pair_loss.defvjp(_pair_loss_fwd, _pair_loss_bwd)
