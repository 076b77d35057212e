"""clip_jax.losses against independent float64 NumPy references, on 1 and 8 devices.

The references below are plain loops / NumPy with hand-derived gradients, which
are themselves checked by finite differences. Every loss and every form is then
checked for values and gradients (image, text, scale, bias) on one device, on
8 simulated devices over one mesh axis and over two ('data', 'fsdp').
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from clip_jax.losses import clip_lite_loss, clip_loss, contrastive_metrics, sigmoid_loss
from clip_jax.losses.clip_lite import hardest_negative_texts

N_LOCAL, DIM, SCALE, BIAS = 8, 16, 8.0, -4.0


# ----------------------------------------------------------------------------
# float64 references: (loss, d_images, d_texts, d_scale, d_bias)


def _logsumexp(v):
    m = np.max(v)
    return m + np.log(np.sum(np.exp(v - m)))


def _softplus(v):
    return np.logaddexp(0.0, v)


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def np_clip(x, y, t, b):
    n = len(x)
    sim = x @ y.T
    logits = t * sim
    row_lse = np.array([_logsumexp(logits[i, :]) for i in range(n)])
    col_lse = np.array([_logsumexp(logits[:, j]) for j in range(n)])
    loss = sum(row_lse[i] - logits[i, i] + col_lse[i] - logits[i, i] for i in range(n)) / (2 * n)
    g = (np.exp(logits - row_lse[:, None]) + np.exp(logits - col_lse[None, :]) - 2 * np.eye(n)) / (2 * n)
    return loss, t * g @ y, t * g.T @ x, np.sum(g * sim), 0.0


def np_sigmoid(x, y, t, b):
    n = len(x)
    sim = x @ y.T
    logits = t * sim + b
    loss = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            loss += _softplus(-z * logits[i, j])  # -log sigmoid(z l)
    g = (_sigmoid(logits) - np.eye(n)) / n
    return loss / n, t * g @ y, t * g.T @ x, np.sum(g * sim), np.sum(g)


def shifted_negatives(x, y):
    """The paper's negative caption of image i: the next one, cyclically."""
    return [(i + 1) % len(x) for i in range(len(x))]


def hardest_negatives(x, y):
    """The caption j != i with the highest x_i . y_j; a tie goes to the lowest j."""
    sim = x @ y.T
    np.fill_diagonal(sim, -np.inf)
    return [int(np.argmax(row)) for row in sim]


def np_clip_lite(x, y, t, b, negatives=shifted_negatives):
    n = len(x)
    dx, dy, dt, loss = np.zeros_like(x), np.zeros_like(y), 0.0, 0.0
    for i, k in enumerate(negatives(x, y)):
        pos, neg = t * x[i] @ y[i], t * x[i] @ y[k]
        loss += (_softplus(-pos) + _softplus(neg)) / n
        g_pos, g_neg = -_sigmoid(-pos) / n, _sigmoid(neg) / n
        dx[i] += t * (g_pos * y[i] + g_neg * y[k])
        dy[i] += t * g_pos * x[i]
        dy[k] += t * g_neg * x[i]
        dt += g_pos * x[i] @ y[i] + g_neg * x[i] @ y[k]
    return loss, dx, dy, dt, 0.0


def np_metrics(x, y, t, b):
    n = len(x)
    logits = t * x @ y.T + b
    return {
        "i2t_top1": np.mean(np.argmax(logits, axis=1) == np.arange(n)),
        "t2i_top1": np.mean(np.argmax(logits, axis=0) == np.arange(n)),
        "pos_logit_mean": np.mean(np.diag(logits)),
        "neg_logit_mean": (np.sum(logits) - np.trace(logits)) / (n * (n - 1)),
    }


REFERENCES = {
    "clip": np_clip,
    "sigmoid": np_sigmoid,
    "clip_lite": np_clip_lite,
    "clip_lite_hardest": functools.partial(np_clip_lite, negatives=hardest_negatives),
}


def numeric_grad(f, v, eps=1e-6):
    """Central finite differences of the scalar f at the float64 array v."""
    grad = np.zeros_like(v)
    for idx in np.ndindex(v.shape):
        up, down = v.copy(), v.copy()
        up[idx] += eps
        down[idx] -= eps
        grad[idx] = (f(up) - f(down)) / (2 * eps)
    return grad


def loss_fn(name, impl, block_size):
    """A uniform (x, y, t, b, axis_name) -> loss for each loss and form."""
    if name == "clip":
        return lambda x, y, t, b, ax: clip_loss(x, y, t, ax, impl=impl, block_size=block_size)
    if name == "sigmoid":
        return lambda x, y, t, b, ax: sigmoid_loss(x, y, t, b, ax, impl=impl, block_size=block_size)
    if name == "clip_lite_hardest":
        block = block_size if impl == "blockwise" else None
        return lambda x, y, t, b, ax: clip_lite_loss(x, y, t, ax, negatives="hardest", block_size=block)
    return lambda x, y, t, b, ax: clip_lite_loss(x, y, t, ax)


CASES = [("clip", "all_gather"), ("clip", "blockwise"), ("sigmoid", "all_gather"),
         ("sigmoid", "blockwise"), ("clip_lite", None), ("clip_lite_hardest", "all_gather"),
         ("clip_lite_hardest", "blockwise")]
CASE_IDS = [f"{name}-{impl}" if impl else name for name, impl in CASES]


def embeddings(n, d=DIM, seed=0):
    """Unit-norm image and text embeddings [n, d], texts correlated with their images."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = x + 1.2 * rng.normal(size=(n, d))
    unit = lambda a: (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)
    return unit(x), unit(y)


def reference(name, x, y, t=SCALE, b=BIAS):
    return REFERENCES[name](x.astype(np.float64), y.astype(np.float64), t, b)


def assert_matches(value, grads, ref):
    """float32 against a float64 reference: the loss sums B^2 = 4096 terms of size ~SCALE (rel. 1e-5 is
    ~80 ulps); gradient entries are differences of such sums, so small ones get an absolute floor."""
    np.testing.assert_allclose(value, ref[0], rtol=1e-5)
    for got, want in zip(grads, ref[1:]):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=2e-6)


def mesh_and_axis(kind):
    if kind == "data8":
        return jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,)), "data"
    mesh = jax.make_mesh((2, 4), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)
    return mesh, ("data", "fsdp")


# ----------------------------------------------------------------------------
# the references themselves


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_reference_gradients_match_finite_differences(name):
    x, y = (a.astype(np.float64) for a in embeddings(6, 4, seed=3))
    ref = REFERENCES[name]
    _, dx, dy, dt, db = ref(x, y, SCALE, BIAS)

    np.testing.assert_allclose(dx, numeric_grad(lambda v: ref(v, y, SCALE, BIAS)[0], x), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(dy, numeric_grad(lambda v: ref(x, v, SCALE, BIAS)[0], y), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(dt, numeric_grad(lambda v: ref(x, y, v[()], BIAS)[0], np.array(SCALE)), rtol=1e-5)
    np.testing.assert_allclose(db, numeric_grad(lambda v: ref(x, y, SCALE, v[()])[0], np.array(BIAS)),
                               rtol=1e-5, atol=1e-8)


# ----------------------------------------------------------------------------
# one device


@pytest.mark.parametrize("name,impl", CASES, ids=CASE_IDS)
def test_single_device(name, impl):
    x, y = embeddings(64)
    f = loss_fn(name, impl, block_size=16)
    value, grads = jax.jit(jax.value_and_grad(lambda *a: f(*a, None), argnums=(0, 1, 2, 3)))(
        x, y, SCALE, BIAS)
    assert value.dtype == jnp.float32 and value.shape == ()
    assert_matches(value, grads, reference(name, x, y))


@pytest.mark.parametrize("name", ["clip", "sigmoid"])
@pytest.mark.parametrize("block_size", [1, 8, 32, 1000])
def test_blockwise_any_dividing_block_size(name, block_size):
    x, y = embeddings(32)
    f = loss_fn(name, "blockwise", block_size)
    value, grads = jax.value_and_grad(lambda *a: f(*a, None), argnums=(0, 1, 2, 3))(x, y, SCALE, BIAS)
    assert_matches(value, grads, reference(name, x, y))


@pytest.mark.parametrize("name", ["clip", "sigmoid"])
def test_block_size_must_divide_local_batch(name):
    x, y = embeddings(12)
    with pytest.raises(ValueError, match="must divide the local batch size n=12"):
        loss_fn(name, "blockwise", 5)(x, y, SCALE, BIAS, None)
    with pytest.raises(ValueError, match="positive"):
        loss_fn(name, "blockwise", 0)(x, y, SCALE, BIAS, None)


def test_bad_arguments_raise():
    x, y = embeddings(8)
    with pytest.raises(ValueError, match="impl"):
        clip_loss(x, y, SCALE, impl="ring")
    with pytest.raises(ValueError, match="impl"):
        sigmoid_loss(x, y, SCALE, BIAS, impl="dense")
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        clip_loss(x, y[:4], SCALE)


def test_low_precision_inputs_compute_in_float32():
    x, y = embeddings(16)
    xb, yb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(y, jnp.bfloat16)
    for impl in ("all_gather", "blockwise"):
        value = clip_loss(xb, yb, SCALE, impl=impl, block_size=4)
        assert value.dtype == jnp.float32
        want = reference("clip", np.asarray(xb, np.float32), np.asarray(yb, np.float32))[0]
        np.testing.assert_allclose(value, want, rtol=1e-5)
        assert jax.grad(clip_loss)(xb, yb, SCALE, impl=impl, block_size=4).dtype == jnp.bfloat16


# ----------------------------------------------------------------------------
# 8 devices: the loss of the global batch, gradients of the global batch


@pytest.mark.parametrize("mesh_kind,check_vma", [("data8", True), ("data2_fsdp4", True), ("data8", False)],
                         ids=["data8", "data2_fsdp4", "data8-check_vma_off"])
@pytest.mark.parametrize("name,impl", CASES, ids=CASE_IDS)
def test_sharded_value_and_grad(name, impl, mesh_kind, check_vma):
    mesh, axis = mesh_and_axis(mesh_kind)
    x, y = embeddings(8 * N_LOCAL)
    f = loss_fn(name, impl, block_size=4)  # two tiles per device step
    sharded = jax.shard_map(functools.partial(f, ax=axis), mesh=mesh, check_vma=check_vma,
                            in_specs=(P(axis), P(axis), P(), P()), out_specs=P())
    value, grads = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1, 2, 3)))(x, y, SCALE, BIAS)
    assert_matches(value, grads, reference(name, x, y))


@pytest.mark.parametrize("name,impl", CASES, ids=CASE_IDS)
def test_sharded_per_device_value_and_local_grads(name, impl):
    """Inside shard_map: the global loss on every device, local slices of global grads."""
    mesh, axis = mesh_and_axis("data8")
    x, y = embeddings(8 * N_LOCAL, seed=1)
    f = loss_fn(name, impl, block_size=4)

    def per_device(x, y, t, b):
        value, grads = jax.value_and_grad(f, argnums=(0, 1, 2, 3))(x, y, t, b, axis)
        return value[None], grads

    run = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(axis), P(axis), P(), P()),
                                out_specs=(P(axis), (P(axis), P(axis), P(), P()))))
    values, grads = run(x, y, SCALE, BIAS)
    ref = reference(name, x, y)
    assert values.shape == (8,)
    np.testing.assert_allclose(values, np.full(8, ref[0]), rtol=1e-5)
    assert_matches(values[0], grads, ref)


@pytest.mark.parametrize("name", ["clip", "sigmoid"])
def test_blockwise_equals_all_gather_sharded(name):
    """The two forms agree to float32 rounding with several tiles per device step."""
    mesh, axis = mesh_and_axis("data2_fsdp4")
    x, y = embeddings(8 * 16, seed=2)

    def value_and_grads(impl):
        f = functools.partial(loss_fn(name, impl, block_size=4), ax=axis)
        sharded = jax.shard_map(f, mesh=mesh, in_specs=(P(axis), P(axis), P(), P()), out_specs=P())
        return jax.jit(jax.value_and_grad(sharded, argnums=(0, 1, 2, 3)))(x, y, SCALE, BIAS)

    dense, ring = value_and_grads("all_gather"), value_and_grads("blockwise")
    for a, b in zip(jax.tree.leaves(dense), jax.tree.leaves(ring)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_hardest_negatives_cross_devices_and_break_ties_low():
    """The sharded cases above only test "hardest" if its negatives live on other devices; ties go low."""
    x, y = embeddings(8 * N_LOCAL)
    chosen = hardest_negatives(x.astype(np.float64), y.astype(np.float64))
    assert sum(k // N_LOCAL != i // N_LOCAL for i, k in enumerate(chosen)) > 8 * N_LOCAL // 2
    y_tied = y.copy()
    y_tied[5] = y_tied[50]  # caption 5 and 50 now score the same against every image
    chosen = hardest_negatives(x.astype(np.float64), y_tied.astype(np.float64))
    assert 5 in chosen and 50 not in [k for i, k in enumerate(chosen) if i not in (5,)]
    mesh, axis = mesh_and_axis("data8")
    pick = jax.jit(jax.shard_map(lambda x, y: hardest_negative_texts(x, y, axis, block_size=4), mesh=mesh,
                                 in_specs=(P(axis), P(axis)), out_specs=P(axis)))
    np.testing.assert_array_equal(pick(x, y_tied), y_tied[chosen])


# ----------------------------------------------------------------------------
# metrics


def test_metrics_single_device():
    x, y = embeddings(32)
    got = jax.jit(functools.partial(contrastive_metrics, block_size=8))(x, y, SCALE, BIAS)
    want = np_metrics(x.astype(np.float64), y.astype(np.float64), SCALE, BIAS)
    assert 0.2 < want["i2t_top1"] < 1.0  # a batch where top-1 means something
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("mesh_kind", ["data8", "data2_fsdp4"])
def test_metrics_sharded(mesh_kind):
    mesh, axis = mesh_and_axis(mesh_kind)
    x, y = embeddings(8 * N_LOCAL, seed=4)
    f = lambda x, y, t: contrastive_metrics(x, y, t, None, axis, block_size=4)
    got = jax.jit(jax.shard_map(f, mesh=mesh, in_specs=(P(axis), P(axis), P()), out_specs=P()))(
        x, y, SCALE)
    want = np_metrics(x.astype(np.float64), y.astype(np.float64), SCALE, 0.0)
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
