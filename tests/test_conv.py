"""models.conv: XLA's convolution forward and input gradient, the kernel gradient as matrix products on CPU."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clip_jax.models import conv

# (input [B, H, W, I], kernel size, stride, output features): ModifiedResNet's convolutions are 1x1 and
# 3x3 with padding k // 2, the stem's first one at stride 2; odd sizes check the strided windows' ends. A
# ViT's patch embedding has kernel = stride and no padding (`padding`); 13 x 10 leaves a row and two
# columns past the last whole 4 x 4 patch, which the convolution drops.
CASES = [((2, 9, 11, 5), 3, 1, 7), ((2, 9, 11, 5), 3, 2, 7), ((3, 8, 8, 5), 1, 1, 6), ((2, 15, 14, 3), 3, 2, 4),
         ((2, 13, 10, 3), 4, 4, 5)]


def padding(k, stride):
    """ModifiedResNet's k // 2 on each side; none for a patch embedding (kernel = stride)."""
    return ((0, 0),) * 2 if k == stride else ((k // 2, k // 2),) * 2


PATCHWISE = [(shape, k, stride, features) for shape, k, stride, features in CASES
             if conv.is_patchwise((k, k), (stride, stride), padding(k, stride))]


def operands(shape, k, stride, features):
    rng = np.random.default_rng(k * 10 + stride)
    x = jnp.asarray(rng.standard_normal(shape, np.float32))
    kernel = jnp.asarray(rng.standard_normal((k, k, shape[3], features), np.float32))
    padding_ = padding(k, stride)
    y = jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding_, dimension_numbers=conv.NHWC)
    dy = jnp.asarray(rng.standard_normal(y.shape, np.float32))
    return x, kernel, padding_, y, dy


@pytest.mark.parametrize("shape,k,stride,features", [case for case in CASES if case not in PATCHWISE])
def test_forward_and_input_gradient_are_xlas(shape, k, stride, features):
    x, kernel, padding, y, dy = operands(shape, k, stride, features)
    ours = lambda x, w: conv.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=conv.NHWC)
    xlas = lambda x, w: jax.lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=conv.NHWC)
    np.testing.assert_array_equal(jax.jit(ours)(x, kernel), y)
    dx_ours = jax.jit(lambda dy: jax.vjp(ours, x, kernel)[1](dy)[0])(dy)
    dx_xlas = jax.jit(lambda dy: jax.vjp(xlas, x, kernel)[1](dy)[0])(dy)
    np.testing.assert_array_equal(dx_ours, dx_xlas)  # the same transposed convolution


@pytest.mark.parametrize("shape,k,stride,features", PATCHWISE)
def test_patchwise_convolution_is_a_product_of_patches(shape, k, stride, features):
    """Forward, input and kernel gradient against float64 products of the patches [N, k k I] and the kernel
    [k k I, O]; no convolution op in them, on any platform's program."""
    x, kernel, padding_, y_xla, dy = operands(shape, k, stride, features)
    ours = lambda x, w: conv.conv_general_dilated(x, w, (stride, stride), padding_, dimension_numbers=conv.NHWC)
    forward_and_grads = jax.jit(lambda x, w, dy: (ours(x, w), *jax.vjp(ours, x, w)[1](dy)))
    assert "convolution(" not in forward_and_grads.lower(x, kernel, dy).compile().as_text()
    y, dx, dkernel = (np.asarray(a, np.float64) for a in forward_and_grads(x, kernel, dy))
    (b, h, w, i), (ho, wo) = x.shape, dy.shape[1:3]
    x64, w64, dy64 = np.asarray(x, np.float64), np.asarray(kernel, np.float64).reshape(-1, features), np.asarray(
        dy, np.float64).reshape(-1, features)
    p64 = x64[:, : ho * k, : wo * k].reshape(b, ho, k, wo, k, i).transpose(0, 1, 3, 2, 4, 5).reshape(-1, k * k * i)
    dp64 = dy64 @ w64.T  # [N, k k I]: each patch's input gradient
    dx64 = np.zeros_like(x64)  # the rows and columns past the last whole patch get none
    dx64[:, : ho * k, : wo * k] = dp64.reshape(b, ho, wo, k, k, i).transpose(0, 1, 3, 2, 4, 5).reshape(
        b, ho * k, wo * k, i)
    # float32 sums of n products: each within n eps sum|terms| of the exact sum (n = k k I, O, N).
    eps = np.finfo(np.float32).eps
    n_forward, n_input, n_kernel = p64.shape[1], features, p64.shape[0]
    assert np.all(np.abs(y.reshape(-1, features) - p64 @ w64) <= n_forward * eps * (np.abs(p64) @ np.abs(w64)))
    bound_dp = n_input * eps * (np.abs(dy64) @ np.abs(w64.T))
    bound_dx = np.zeros_like(x64)
    bound_dx[:, : ho * k, : wo * k] = bound_dp.reshape(b, ho, wo, k, k, i).transpose(0, 1, 3, 2, 4, 5).reshape(
        b, ho * k, wo * k, i)
    assert np.all(np.abs(dx - dx64) <= bound_dx)
    assert np.all(np.abs(dkernel.reshape(-1, features) - p64.T @ dy64)
                  <= n_kernel * eps * (np.abs(p64.T) @ np.abs(dy64)))
    # XLA's convolution sums the same products in another order: within both bounds of ours.
    assert np.all(np.abs(y - np.asarray(y_xla)).reshape(-1, features)
                  <= 2 * n_forward * eps * (np.abs(p64) @ np.abs(w64)))


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
