"""2-D convolution (NHWC, HWIO kernels) whose kernel gradient on CPU is a sum of matrix products.

The forward pass and the input gradient are XLA's own convolutions on every
platform (a patchwise one's are matrix products, below). The kernel gradient
is where XLA's CPU backend is slow: it computes
dW[kh, kw, i, o] = sum over (b, y, x) of x_padded[b, s y + kh, s x + kw, i] dy[b, y, x, o]
as a convolution with the batch as the contracting feature, 10-17x slower than
the same arithmetic as kh x kw matrix products [B Ho Wo, I]^T [B Ho Wo, O]
(RN50's stage-2 1x1 kernel gradient at batch 16: 538 ms against 29 ms;
`benchmarks/open_clip_side_by_side.py` shows the whole image tower). On CPU the
kernel gradient is therefore those products, chosen at lowering time with
`jax.lax.platform_dependent`; GPUs and TPUs keep XLA's convolution (cuDNN's and
the TPU's kernel-gradient convolutions are fast). Both compute the same sums in
another order: equal to float32 rounding.

A patchwise convolution (kernel = stride, no padding: windows that tile the
image without overlap) is a matrix product of the patches [B Ho Wo, kh kw I]
with the kernel [kh kw I, O], and is computed as one on every platform,
forward and backward. That covers the ViT's patch embedding and the
pointwise (1x1, stride 1) convolutions, ModifiedResNet's conv1, conv3 and
downsample (36 of RN50's 55). On CPU XLA's convolution takes 1.2-4.5x the
product's time for RN50's shapes (forward at stage 1, 64 -> 256 channels,
batch 16: 46 ms against 27 ms; the input gradient 256 -> 64: 47 ms against
10 ms) and 2.5x for ViT-B-32's patch embedding (batch 16: 52 ms against 20
ms forward, 79 against 41 ms with the kernel gradient).

`conv_general_dilated` has `jax.lax.conv_general_dilated`'s signature, so
`flax.linen.Conv(..., conv_general_dilated=conv_general_dilated)` uses it;
what it does not cover (dilation, feature groups, other layouts) goes to
`jax.lax.conv_general_dilated` unchanged.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

NHWC = ("NHWC", "HWIO", "NHWC")
Padding = tuple[tuple[int, int], ...]


def is_patchwise(kernel_shape: tuple[int, ...], strides: tuple[int, int], padding: Padding) -> bool:
    """Kernel = stride and no padding (a 1x1 kernel at stride 1 included): a matrix product of the patches."""
    return tuple(kernel_shape[:2]) == tuple(strides) and all(p == (0, 0) for p in padding)


def patches(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """x [B, H, W, I] -> its non-overlapping kh x kw patches [B, H // kh, W // kw, kh, kw, I] (a convolution
    without padding leaves out the rows and columns past the last whole patch)."""
    (kh, kw), (b, h, w, i) = size, x.shape
    whole = x[:, : h - h % kh, : w - w % kw]
    return whole.reshape(b, h // kh, kh, w // kw, kw, i).transpose(0, 1, 3, 2, 4, 5)


def _conv(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: Padding) -> jax.Array:
    """x [B, H, W, I], kernel [kh, kw, I, O] -> [B, Ho, Wo, O]; a patchwise one as the product of the
    patches [B, Ho, Wo, kh, kw, I] with the kernel over (kh, kw, I)."""
    if is_patchwise(kernel.shape, strides, padding):
        return jax.lax.dot_general(patches(x, kernel.shape[:2]), kernel, (((3, 4, 5), (0, 1, 2)), ((), ())))
    return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=NHWC)


def kernel_grad_by_products(
    x: jax.Array, dy: jax.Array, kernel_shape: tuple[int, ...], strides: tuple[int, int], padding: Padding
) -> jax.Array:
    """x [B, H, W, I], dy [B, Ho, Wo, O] -> dW [kh, kw, I, O] in dy's dtype, as kh x kw matrix products over
    (b, y, x) accumulated in float32.

    Each tap's product contracts the leading axis of its window [B Ho Wo, I] with that of dy [B Ho Wo, O]
    and yields [I, O] as it is stored: no transposed copy of dy or of the window (XLA's CPU dot reads
    both operands in place; RN50's stage-1 1x1 kernel gradient 15 ms against 68 ms for dy^T x
    transposed afterwards, 3x3 105 against 132-151 ms, batch 16, 2-core AMD EPYC)."""
    kh, kw = kernel_shape[:2]
    (sy, sx), (ho, wo) = strides, dy.shape[1:3]
    padded = jnp.pad(x.astype(jnp.float32), ((0, 0), padding[0], padding[1], (0, 0)))  # CPU dots: no bf16 x bf16 -> f32
    dy32 = dy.astype(jnp.float32).reshape(-1, dy.shape[3])  # [B Ho Wo, O]
    rows = []
    for i in range(kh):
        row = []
        for j in range(kw):
            window = jax.lax.slice(  # [B, Ho, Wo, I]: the inputs that kernel tap (i, j) multiplies
                padded, (0, i, j, 0), (x.shape[0], i + sy * (ho - 1) + 1, j + sx * (wo - 1) + 1, x.shape[3]),
                (1, sy, sx, 1),
            )
            row.append(jax.lax.dot_general(window.reshape(-1, x.shape[3]), dy32, (((0,), (0,)), ((), ()))))  # [I, O]
        rows.append(jnp.stack(row))
    return jnp.stack(rows).astype(dy.dtype)


def kernel_grad_by_transpose(
    x: jax.Array, dy: jax.Array, kernel_shape: tuple[int, ...], strides: tuple[int, int], padding: Padding
) -> jax.Array:
    """The transpose of `_conv` (XLA's convolution, a patchwise one's product), linear in the kernel. [kh, kw, I, O]."""
    template = jax.ShapeDtypeStruct(kernel_shape, dy.dtype)
    (grad,) = jax.linear_transpose(lambda k: _conv(x, k, strides, padding), template)(dy)
    return grad


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: Padding) -> jax.Array:
    """x [B, H, W, I], kernel [kh, kw, I, O] -> [B, Ho, Wo, O]; padding ((top, bottom), (left, right))."""
    return _conv(x, kernel, strides, padding)


def _conv2d_fwd(x, kernel, strides, padding):
    return _conv(x, kernel, strides, padding), (x, kernel)


def _conv2d_bwd(strides, padding, residuals, dy):
    x, kernel = residuals
    (dx,) = jax.linear_transpose(lambda v: _conv(v, kernel, strides, padding), x)(dy)
    options = dict(kernel_shape=kernel.shape, strides=strides, padding=padding)
    if is_patchwise(kernel.shape, strides, padding) and kernel.shape[:2] != (1, 1):
        dkernel = kernel_grad_by_transpose(x, dy, **options)  # one product of the patches with dy, everywhere
    else:  # one product per kernel tap on CPU (one in all for a pointwise kernel)
        dkernel = jax.lax.platform_dependent(
            x, dy, cpu=functools.partial(kernel_grad_by_products, **options),
            default=functools.partial(kernel_grad_by_transpose, **options),
        )
    return dx, dkernel.astype(kernel.dtype)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """`jax.lax.conv_general_dilated`, through `conv2d` for plain NHWC/HWIO 2-D convolutions."""
    as_numbers = lambda numbers: jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, numbers)
    plain = (
        lhs.ndim == 4 and dimension_numbers is not None and as_numbers(dimension_numbers) == as_numbers(NHWC)
        and all(d == 1 for d in tuple(lhs_dilation or (1, 1)) + tuple(rhs_dilation or (1, 1)))
        and feature_group_count == 1 and batch_group_count == 1 and precision is None and preferred_element_type is None
    )
    if not plain:
        return jax.lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
            batch_group_count, precision, preferred_element_type,
        )
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    return conv2d(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding))
