"""models.conv: XLA's convolution forward and input gradient, the kernel gradient as matrix products on CPU."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clip_jax.models import conv

# (input [B, H, W, I], kernel size, stride, output features): ModifiedResNet's convolutions are 1x1 and
# 3x3 with padding k // 2, the stem's first one at stride 2; odd sizes check the strided windows' ends.
CASES = [((2, 9, 11, 5), 3, 1, 7), ((2, 9, 11, 5), 3, 2, 7), ((3, 8, 8, 5), 1, 1, 6), ((2, 15, 14, 3), 3, 2, 4)]
POINTWISE = [(shape, k, stride, features) for shape, k, stride, features in CASES
             if conv.is_pointwise((k, k), (stride, stride), ((k // 2, k // 2),) * 2)]  # padding as `operands` has it


def operands(shape, k, stride, features):
    rng = np.random.default_rng(k * 10 + stride)
    x = jnp.asarray(rng.standard_normal(shape, np.float32))
    kernel = jnp.asarray(rng.standard_normal((k, k, shape[3], features), np.float32))
    padding = ((k // 2, k // 2),) * 2
    y = jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=conv.NHWC)
    dy = jnp.asarray(rng.standard_normal(y.shape, np.float32))
    return x, kernel, padding, y, dy


@pytest.mark.parametrize("shape,k,stride,features", [case for case in CASES if case not in POINTWISE])
def test_forward_and_input_gradient_are_xlas(shape, k, stride, features):
    x, kernel, padding, y, dy = operands(shape, k, stride, features)
    ours = lambda x, w: conv.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=conv.NHWC)
    xlas = lambda x, w: jax.lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=conv.NHWC)
    np.testing.assert_array_equal(jax.jit(ours)(x, kernel), y)
    dx_ours = jax.jit(lambda dy: jax.vjp(ours, x, kernel)[1](dy)[0])(dy)
    dx_xlas = jax.jit(lambda dy: jax.vjp(xlas, x, kernel)[1](dy)[0])(dy)
    np.testing.assert_array_equal(dx_ours, dx_xlas)  # the same transposed convolution


@pytest.mark.parametrize("shape,k,stride,features", POINTWISE)
def test_pointwise_convolution_is_a_product_over_channels(shape, k, stride, features):
    x, kernel, padding, _, dy = operands(shape, k, stride, features)
    ours = lambda x, w: conv.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=conv.NHWC)
    forward_and_input_grad = jax.jit(lambda x, w, dy: (ours(x, w), jax.vjp(ours, x, w)[1](dy)[0]))
    assert "convolution(" not in forward_and_input_grad.lower(x, kernel, dy).compile().as_text()
    y, dx = forward_and_input_grad(x, kernel, dy)
    x64, w64, dy64 = (np.asarray(a, np.float64) for a in (x, kernel[0, 0], dy))
    # float32 sums of I (forward) and O (input gradient) products: each within n eps sum|terms| of the exact sum.
    eps = np.finfo(np.float32).eps
    assert np.all(np.abs(np.asarray(y) - x64 @ w64) <= x64.shape[-1] * eps * (np.abs(x64) @ np.abs(w64)))
    assert np.all(np.abs(np.asarray(dx) - dy64 @ w64.T) <= dy64.shape[-1] * eps * (np.abs(dy64) @ np.abs(w64.T)))


@pytest.mark.parametrize("shape,k,stride,features", CASES)
def test_kernel_gradient_by_products_equals_xlas_transpose(shape, k, stride, features):
    x, kernel, padding, _, dy = operands(shape, k, stride, features)
    args = dict(kernel_shape=kernel.shape, strides=(stride, stride), padding=padding)
    products = jax.jit(lambda x, dy: conv.kernel_grad_by_products(x, dy, **args))
    transpose = jax.jit(lambda x, dy: conv.kernel_grad_by_transpose(x, dy, **args))
    # Each entry is a float32 sum of n = B Ho Wo products in some order: each side is within
    # n eps sum|x dy| of the exact sum (sum|x dy| is the same sums over |x|, |dy|), so the two within twice that.
    n = dy.shape[0] * dy.shape[1] * dy.shape[2]
    bound = 2 * n * np.finfo(np.float32).eps * np.asarray(products(jnp.abs(x), jnp.abs(dy)))
    difference = np.abs(np.asarray(products(x, dy)) - np.asarray(transpose(x, dy)))
    assert np.all(difference <= bound), float(np.max(difference / bound))


def test_cpu_kernel_gradient_has_no_convolution():
    """On CPU the kernel gradient through conv_general_dilated compiles to products: no convolution op in it."""
    x, kernel, padding, _, dy = operands(*CASES[1])
    ours = lambda w: conv.conv_general_dilated(x, w, (2, 2), padding, dimension_numbers=conv.NHWC)
    grad = jax.jit(lambda dy: jax.vjp(ours, kernel)[1](dy)[0])
    assert "convolution(" not in grad.lower(dy).compile().as_text()
    np.testing.assert_array_equal(
        grad(dy), jax.jit(lambda dy: conv.kernel_grad_by_products(x, dy, kernel.shape, (2, 2), padding))(dy)
    )


def test_other_convolutions_go_to_lax_unchanged():
    x, kernel, _, _, _ = operands(*CASES[0])
    dilated = dict(window_strides=(1, 1), padding="SAME", rhs_dilation=(2, 2), dimension_numbers=conv.NHWC)
    np.testing.assert_array_equal(
        jax.jit(lambda x, w: conv.conv_general_dilated(x, w, **dilated))(x, kernel),
        jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, **dilated))(x, kernel),
    )
    same = lambda x, w: conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=conv.NHWC)
    np.testing.assert_array_equal(
        jax.jit(same)(x, kernel),
        jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=conv.NHWC),
    )


def test_bfloat16_kernel_gradient_is_float32_sums_rounded_once():
    x, kernel, padding, _, dy = (a.astype(jnp.bfloat16) if hasattr(a, "astype") else a for a in operands(*CASES[0]))
    ours = lambda w: conv.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=conv.NHWC)
    grad = jax.jit(lambda dy: jax.vjp(ours, kernel)[1](dy)[0])(dy)
    assert grad.dtype == jnp.bfloat16
    as_f32 = lambda a: a.astype(jnp.float32)
    args = dict(kernel_shape=kernel.shape, strides=(1, 1), padding=padding)
    want = np.asarray(conv.kernel_grad_by_transpose(as_f32(x), as_f32(dy), **args))
    # Sums of the same bfloat16 products in float32 (bound as above), then one rounding to bfloat16 (2^-9 relative).
    n = dy.shape[0] * dy.shape[1] * dy.shape[2]
    sums_bound = 2 * n * np.finfo(np.float32).eps * np.asarray(
        conv.kernel_grad_by_products(jnp.abs(as_f32(x)), jnp.abs(as_f32(dy)), **args))
    assert np.all(np.abs(np.asarray(as_f32(grad)) - want) <= np.abs(want) * 2.0**-8 + sums_bound)
