"""clip_jax.losses.declip against independent float64 NumPy references, on 1 and 8 devices.

The references are plain NumPy with hand-derived gradients, checked by finite
differences. Each term is then checked for its value and the gradients w.r.t.
every differentiable input on one device, inside `jax.shard_map` over 8
simulated devices on one mesh axis ("data") and on two ("data", "fsdp").
The global batch is 8 devices x 4 examples, embeddings have 16 dimensions.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from test_losses import numeric_grad
from clip_jax.losses import (clip_loss, image_to_text_loss, mask_tokens, masked_lm_loss, masked_lm_sums,
                             multi_view_loss, nearest_neighbour_loss, nearest_neighbours, simsiam_loss)

DEVICES, N_LOCAL, DIM, SCALE = 8, 4, 16, 8.0
N = DEVICES * N_LOCAL
SLOTS, FILLED = 3, np.array([True, False, True])  # the queue: slot 1 is not filled yet
MESHES = ["data8", "data2_fsdp4"]


def mesh_and_axis(kind):
    if kind == "data8":
        return jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,)), "data"
    mesh = jax.make_mesh((2, 4), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)
    return mesh, ("data", "fsdp")


def value_and_grads(fn, args, argnums, mesh_kind=None, specs=None):
    """jit(value_and_grad) of fn(*args, axis_name): on one device (mesh_kind None), or inside
    `jax.shard_map` over the mesh, `specs(axis)` giving the in_specs and the loss replicated."""
    if mesh_kind is None:
        f = lambda *a: fn(*a, None)
    else:
        mesh, axis = mesh_and_axis(mesh_kind)
        f = jax.shard_map(lambda *a: fn(*a, axis), mesh=mesh, in_specs=specs(axis), out_specs=P())
    value, grads = jax.jit(jax.value_and_grad(f, argnums=argnums))(*args)
    assert value.dtype == jnp.float32 and value.shape == ()
    return value, grads


def assert_close(value, grads, ref_value, ref_grads):
    """float32 against float64: the values are sums of a few dozen float32 terms of size ~SCALE
    (rel. 1e-5 is ~80 ulps); gradient entries are differences of such terms, so small ones get an
    absolute floor."""
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=2e-6)


def unit(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def f32(*arrays):
    return tuple(np.asarray(a, np.float32) for a in arrays)


def f64(*arrays):
    return tuple(np.asarray(a, np.float64) for a in arrays)


# ----------------------------------------------------------------------------
# float64 references: (loss, gradients...)


def _logsumexp(v, axis):
    m = np.max(v, axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(v - m), axis=axis))


def np_simsiam(p1, z1, p2, z2):
    """-(1/2N) sum_i [cos(p1_i, z2_i) + cos(p2_i, z1_i)]; d/dp cos(p, z) = (z^ - cos p^) / |p|."""
    n = len(p1)

    def cos_and_grad(p, z):
        pn, zn = np.linalg.norm(p, axis=1, keepdims=True), np.linalg.norm(z, axis=1, keepdims=True)
        cos = np.sum(p * z, axis=1, keepdims=True) / (pn * zn)
        return cos, (z / zn - cos * p / pn) / pn

    c12, g12 = cos_and_grad(p1, z2)
    c21, g21 = cos_and_grad(p2, z1)
    return -(np.sum(c12) + np.sum(c21)) / (2 * n), -g12 / (2 * n), -g21 / (2 * n)


def np_masked_lm(logits, targets, weights):
    """(loss, d_logits, ce_sum [n], count [n]); d CE / d logits = softmax - onehot."""
    ce_sum, count = np.zeros(len(logits)), np.zeros(len(logits))
    d_logits = np.zeros_like(logits)
    for i, l in np.ndindex(targets.shape):
        row = logits[i, l]
        lse = _logsumexp(row, 0)
        ce_sum[i] += weights[i, l] * (lse - row[targets[i, l]])
        count[i] += weights[i, l]
        d_logits[i, l] = weights[i, l] * (np.exp(row - lse) - np.eye(len(row))[targets[i, l]])
    denominator = max(np.sum(count), 1.0)
    return np.sum(ce_sum) / denominator, d_logits / denominator, ce_sum, count


def np_image_to_text(x, y, t):
    """(loss, dx, dy, dt) of 1/N sum_i [lse_j t x_i.y_j - t x_i.y_i]; g = (softmax_rows - I) / N."""
    n = len(x)
    sim = x @ y.T
    lse = _logsumexp(t * sim, 1)
    loss = np.mean(lse - t * np.diag(sim))
    g = (np.exp(t * sim - lse[:, None]) - np.eye(n)) / n
    return loss, t * g @ y, t * g.T @ x, np.sum(g * sim)


def np_clip(x, y, t):
    """CLIP's symmetric loss as the mean of the two one-direction losses."""
    a, b = np_image_to_text(x, y, t), np_image_to_text(y, x, t)
    return (a[0] + b[0]) / 2, (a[1] + b[2]) / 2, (a[2] + b[1]) / 2, (a[3] + b[3]) / 2


def np_multi_view(xs, ys, t):
    """(loss, [dx per image view], [dy per text view], dt): the mean of np_clip over all pairs."""
    pairs = len(xs) * len(ys)
    loss, dxs, dys, dt = 0.0, [np.zeros_like(x) for x in xs], [np.zeros_like(y) for y in ys], 0.0
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            value, dx, dy, d_t = np_clip(x, y, t)
            loss, dt = loss + value / pairs, dt + d_t / pairs
            dxs[i] += dx / pairs
            dys[j] += dy / pairs
    return loss, dxs, dys, dt


def np_nearest(queries, queue, filled):
    """Brute force over the global queue [S, N, d] (entry (s, j) has index s*N + j): the filled
    entry with the highest q.e, the lowest index on a tie; the query itself if none is filled.
    Returns the neighbours [N, d] and their global indices [N] (-1 for the query itself)."""
    entries = queue.reshape(-1, queue.shape[-1])
    if not filled.any():
        return queries.copy(), np.full(len(queries), -1)
    scores = np.where(np.repeat(filled, queue.shape[1])[None, :], queries @ entries.T, -np.inf)
    index = np.argmax(scores, axis=1)  # the first maximum
    return entries[index], index


def np_nearest_neighbour_loss(xs, ys, queue, filled, t):
    """(loss, [dx per image view], dt): mean over (v, t) of np_image_to_text(x_v, NN(y_t))."""
    pairs = len(xs) * len(ys)
    loss, dxs, dt = 0.0, [np.zeros_like(x) for x in xs], 0.0
    for i, x in enumerate(xs):
        for y in ys:
            value, dx, _, d_t = np_image_to_text(x, np_nearest(y, queue, filled)[0], t)
            loss, dt = loss + value / pairs, dt + d_t / pairs
            dxs[i] += dx / pairs
    return loss, dxs, dt


# ----------------------------------------------------------------------------
# data


def views(n=N, seed=0, count=2):
    """`count` image views and `count` text views, unit-norm float32 [n, DIM], texts near their images."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, DIM))
    images = [unit(base + 0.5 * rng.normal(size=(n, DIM))) for _ in range(count)]
    texts = [unit(base + 1.2 * rng.normal(size=(n, DIM))) for _ in range(count)]
    return [f32(v)[0] for v in images], [f32(v)[0] for v in texts]


def queue_data(seed=0):
    """A global queue [SLOTS, N, DIM] of unit float32 entries; the unfilled slot 1 holds exact copies
    of the text views, which would win every search if unfilled slots were searched."""
    rng = np.random.default_rng(seed + 100)
    _, texts = views(seed=seed)
    queue = unit(rng.normal(size=(SLOTS, N, DIM))).astype(np.float32)
    queue[1] = texts[0]
    return queue


def simsiam_inputs(seed=0):
    rng = np.random.default_rng(seed)
    return f32(*(rng.normal(size=(N, DIM)) * rng.uniform(0.5, 3.0, size=(N, 1)) for _ in range(4)))


def mlm_inputs(seed=0, length=6, vocab=11):
    """Logits [N, length, vocab], targets, weights with ~30% masked; example 0 has none masked."""
    rng = np.random.default_rng(seed)
    logits = (2.0 * rng.normal(size=(N, length, vocab))).astype(np.float32)
    targets = rng.integers(0, vocab, size=(N, length)).astype(np.int32)
    weights = (rng.uniform(size=(N, length)) < 0.3).astype(np.float32)
    weights[0] = 0.0
    return logits, targets, weights


# ----------------------------------------------------------------------------
# the references themselves


def test_reference_gradients_match_finite_differences():
    p1, z1, p2, z2 = f64(*simsiam_inputs(seed=3))[:4]
    p1, z1, p2, z2 = p1[:5, :4], z1[:5, :4], p2[:5, :4], z2[:5, :4]
    _, dp1, dp2 = np_simsiam(p1, z1, p2, z2)
    np.testing.assert_allclose(dp1, numeric_grad(lambda v: np_simsiam(v, z1, p2, z2)[0], p1), atol=1e-8)
    np.testing.assert_allclose(dp2, numeric_grad(lambda v: np_simsiam(p1, z1, v, z2)[0], p2), atol=1e-8)

    logits, targets, weights = mlm_inputs(seed=3, length=3, vocab=5)
    logits, targets, weights = f64(logits[:4])[0], targets[:4], f64(weights[:4])[0]
    weights[1, 1] = 1.0
    d_logits = np_masked_lm(logits, targets, weights)[1]
    np.testing.assert_allclose(
        d_logits, numeric_grad(lambda v: np_masked_lm(v, targets, weights)[0], logits), atol=1e-8)

    (x, _), (y, _) = (f64(*v) for v in views(n=6, seed=3))
    x, y = unit(x[:, :4]), unit(y[:, :4])
    for ref in (np_image_to_text, np_clip):
        _, dx, dy, dt = ref(x, y, SCALE)
        np.testing.assert_allclose(dx, numeric_grad(lambda v: ref(v, y, SCALE)[0], x), rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(dy, numeric_grad(lambda v: ref(x, v, SCALE)[0], y), rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(dt, numeric_grad(lambda v: ref(x, y, v[()])[0], np.array(SCALE)),
                                   rtol=1e-5)


# ----------------------------------------------------------------------------
# SimSiam


@pytest.mark.parametrize("mesh_kind", [None] + MESHES)
def test_simsiam(mesh_kind):
    args = simsiam_inputs()
    value, grads = value_and_grads(simsiam_loss, args, (0, 1, 2, 3), mesh_kind,
                                   lambda axis: (P(axis),) * 4)
    loss, dp1, dp2 = np_simsiam(*f64(*args))
    assert_close(value, (grads[0], grads[2]), loss, (dp1, dp2))
    # the targets z1, z2 are under stop-gradient: nothing flows into the projector through them
    np.testing.assert_array_equal(grads[1], 0.0)
    np.testing.assert_array_equal(grads[3], 0.0)


def test_simsiam_zero_vector_is_finite():
    p1, z1, p2, z2 = simsiam_inputs()
    p1[0] = 0.0
    grads = jax.grad(simsiam_loss, argnums=(0, 2))(p1, z1, p2, z2)
    assert all(np.isfinite(g).all() for g in grads)


# ----------------------------------------------------------------------------
# masked language modelling


@pytest.mark.parametrize("mesh_kind", [None] + MESHES)
def test_masked_lm(mesh_kind):
    logits, targets, weights = mlm_inputs()
    weights[N_LOCAL:2 * N_LOCAL] = 0.0  # a device with nothing masked
    value, (d_logits,) = value_and_grads(masked_lm_loss, (logits, targets, weights), (0,), mesh_kind,
                                         lambda axis: (P(axis),) * 3)
    loss, want, _, _ = np_masked_lm(f64(logits)[0], targets, f64(weights)[0])
    assert_close(value, (d_logits,), loss, (want,))


def test_masked_lm_sums_per_example():
    logits, targets, weights = mlm_inputs()
    ce_sum, count = jax.jit(masked_lm_sums)(logits, targets, weights)
    _, _, want_ce, want_count = np_masked_lm(f64(logits)[0], targets, f64(weights)[0])
    assert ce_sum.shape == count.shape == (N,) and ce_sum.dtype == count.dtype == jnp.float32
    np.testing.assert_allclose(ce_sum, want_ce, rtol=1e-5)  # a handful of float32 logsumexps
    np.testing.assert_array_equal(count, want_count)
    assert want_count[0] == 0 and ce_sum[0] == 0


@pytest.mark.parametrize("mesh_kind", [None, "data8"])
def test_masked_lm_nothing_masked_is_zero_with_zero_grads(mesh_kind):
    logits, targets, _ = mlm_inputs()
    weights = np.zeros(targets.shape, np.float32)
    value, (d_logits,) = value_and_grads(masked_lm_loss, (logits, targets, weights), (0,), mesh_kind,
                                         lambda axis: (P(axis),) * 3)
    assert value == 0.0
    assert np.isfinite(d_logits).all()
    np.testing.assert_array_equal(d_logits, 0.0)


# ----------------------------------------------------------------------------
# mask_tokens

VOCAB, START, END, MASK, PAD = 1000, 997, 998, 999, 0
SPECIALS = (PAD, START, END)


def captions(seed=0, n=256, length=77):
    """Token ids like a tokenizer's: START, 3-73 words in [1, 997), END, then PAD."""
    rng = np.random.default_rng(seed)
    tokens = np.zeros((n, length), np.int32)
    for i, words in enumerate(rng.integers(3, length - 3, size=n)):
        tokens[i, 0], tokens[i, words + 1] = START, END
        tokens[i, 1:words + 1] = rng.integers(1, START, size=words)
    return tokens


def mask(rng, tokens):
    return jax.jit(functools.partial(mask_tokens, mask_id=MASK, vocab_size=VOCAB, special_ids=SPECIALS))(
        rng, tokens)


def test_mask_tokens_rates_and_split():
    tokens = captions()
    inputs, targets, weights = (np.asarray(a) for a in mask(jax.random.key(0), tokens))
    assert inputs.dtype == targets.dtype == np.int32 and weights.dtype == np.float32
    np.testing.assert_array_equal(targets, tokens)
    assert set(np.unique(weights)) <= {0.0, 1.0}
    assert ((inputs >= 0) & (inputs < VOCAB)).all()

    special = np.isin(tokens, SPECIALS)
    selected = weights == 1.0
    assert not (selected & special).any()
    np.testing.assert_array_equal(inputs[~selected], tokens[~selected])  # only selected positions change

    # selected ~ Binomial(M, 0.15) over the M ~ 10k word positions: std sqrt(0.15 * 0.85 / M) ~ 0.0036
    m, k = np.sum(~special), np.sum(selected)
    assert abs(k / m - 0.15) < 5 * np.sqrt(0.15 * 0.85 / m)
    # of the K ~ 1500 selected: MASK w.p. 0.8 (+ a random draw of MASK, 0.1/V), unchanged w.p. 0.1
    # (+ a random draw of the same id, 0.1/V), another id otherwise; std sqrt(p (1 - p) / K) <= 0.011
    became = inputs[selected]
    masked, kept = became == MASK, became == tokens[selected]
    for observed, p in [(masked, 0.8 + 0.1 / VOCAB), (kept, 0.1 + 0.1 / VOCAB),
                        (~masked & ~kept, 0.1 - 0.2 / VOCAB)]:
        assert abs(np.mean(observed) - p) < 5 * np.sqrt(p * (1 - p) / k)
    # random replacements are uniform over [0, VOCAB): their mean has std VOCAB / sqrt(12 K_random) ~ 24
    randoms = became[~masked & ~kept]
    assert abs(np.mean(randoms) - (VOCAB - 1) / 2) < 5 * VOCAB / np.sqrt(12 * len(randoms))


def test_mask_tokens_is_a_pure_function_of_rng():
    tokens = captions(seed=1, n=16)
    first, again = mask(jax.random.key(3), tokens), mask(jax.random.key(3), tokens)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    other = mask(jax.random.key(4), tokens)
    assert not np.array_equal(first[2], other[2])


# ----------------------------------------------------------------------------
# one-direction InfoNCE and multi-view


@pytest.mark.parametrize("mesh_kind", [None] + MESHES)
def test_image_to_text(mesh_kind):
    (x, _), (y, _) = views()
    value, grads = value_and_grads(image_to_text_loss, (x, y, SCALE), (0, 1, 2), mesh_kind,
                                   lambda axis: (P(axis), P(axis), P()))
    loss, *ref_grads = np_image_to_text(*f64(x, y), SCALE)
    assert_close(value, grads, loss, ref_grads)


@pytest.mark.parametrize("mesh_kind,impl", [(None, "all_gather"), (None, "blockwise"),
                                            ("data8", "all_gather"), ("data2_fsdp4", "blockwise")])
def test_multi_view(mesh_kind, impl):
    images, texts = views()
    fn = lambda xs, ys, t, axis: multi_view_loss(xs, ys, t, axis, impl=impl, block_size=2)
    value, grads = value_and_grads(fn, (images, texts, SCALE), (0, 1, 2), mesh_kind,
                                   lambda axis: (P(axis), P(axis), P()))
    loss, dxs, dys, dt = np_multi_view([f64(v)[0] for v in images], [f64(v)[0] for v in texts], SCALE)
    assert_close(value, grads, loss, (dxs, dys, dt))


def test_multi_view_is_mean_of_clip_losses():
    (x1, x2), (y1, y2) = views(seed=5)
    pairs = [clip_loss(x, y, SCALE) for x in (x1, x2) for y in (y1, y2)]
    np.testing.assert_allclose(multi_view_loss([x1, x2], [y1, y2], SCALE), np.mean(pairs), rtol=1e-6)


# ----------------------------------------------------------------------------
# nearest neighbours


def search(queries, queue, filled, mesh_kind=None):
    """nearest_neighbours of global queries [N, d] in the global queue [S, N, d], on 1 or 8 devices."""
    if mesh_kind is None:
        return jax.jit(nearest_neighbours)(queries, queue, filled)
    mesh, axis = mesh_and_axis(mesh_kind)
    run = jax.shard_map(lambda q, e, f: nearest_neighbours(q, e, f, axis), mesh=mesh,
                        in_specs=(P(axis), P(None, axis), P()), out_specs=P(axis))
    return jax.jit(run)(queries, queue, filled)


def test_nearest_neighbours_matches_brute_force_across_devices():
    _, (texts, _) = views()
    queue = queue_data()
    want, index = np_nearest(*f64(texts, queue), FILLED)
    # most neighbours live on another device than their query (device of entry s*N + j: j // N_LOCAL)
    assert np.sum(index % N // N_LOCAL != np.arange(N) // N_LOCAL) > N // 2
    assert set(index // N) == {0, 2}  # both filled slots are used, the unfilled one never
    # no near-ties in float32: the second best is well below the best
    texts64, entries64 = f64(texts, queue.reshape(-1, DIM))
    scores = np.sort(np.where(np.repeat(FILLED, N), texts64 @ entries64.T, -np.inf), axis=1)
    assert np.min(scores[:, -1] - scores[:, -2]) > 1e-4
    for mesh_kind in [None] + MESHES:
        got = search(texts, queue, FILLED, mesh_kind)
        assert got.shape == (N, DIM) and got.dtype == jnp.float32
        np.testing.assert_array_equal(got, want.astype(np.float32), err_msg=str(mesh_kind))


def test_nearest_neighbours_ties_go_to_the_lowest_global_index():
    """Queries e_k with two different entries scoring exactly c against them (c e_k + s e_m, m
    differing), placed so that the lower global index is on a higher device, on a lower device
    with a higher local row, at the same local position of another device, or on the same device
    in an earlier slot but a later row."""
    rng = np.random.default_rng(7)
    queries = unit(rng.normal(size=(N, DIM))).astype(np.float32)
    queue = unit(rng.normal(size=(SLOTS, N, DIM))).astype(np.float32)
    queue[:, :, :4] *= 0.1  # random entries score far below c against e_0 .. e_3
    c, s = np.float32(0.96), np.float32(0.28)
    cases = {  # query row -> (the winner (slot, column), the loser (slot, column)), column = k * n + r
        1: ((0, 29), (2, 0)),   # winner on device 7, loser on device 0
        6: ((0, 7), (0, 8)),    # winner on device 1 row 3, loser on device 2 row 0
        13: ((2, 2), (2, 30)),  # row 2 of slot 2 on devices 0 and 7
        20: ((0, 11), (2, 9)),  # same device 2: slot 0 row 3 beats slot 2 row 1
    }
    for k, (row, (winner, loser)) in enumerate(cases.items()):
        queries[row] = np.eye(DIM)[k]
        for m, (slot, column) in ((4 + 2 * k, winner), (5 + 2 * k, loser)):
            queue[slot, column] = c * np.eye(DIM)[k] + s * np.eye(DIM)[m]
    queue[1, :, :] = queries  # unfilled
    want, index = np_nearest(*f64(queries, queue), FILLED)
    for row, (winner, _) in cases.items():
        assert index[row] == winner[0] * N + winner[1]
    for mesh_kind in [None] + MESHES:
        np.testing.assert_array_equal(search(queries, queue, FILLED, mesh_kind), want.astype(np.float32),
                                      err_msg=str(mesh_kind))


def test_nearest_neighbours_of_an_empty_queue_are_the_queries():
    _, (texts, _) = views()
    queue = queue_data()
    for mesh_kind in [None, "data8"]:
        np.testing.assert_array_equal(search(texts, queue, np.zeros(SLOTS, bool), mesh_kind), texts)


def test_nearest_neighbours_carry_no_gradient():
    _, (texts, _) = views()
    queue, weights = queue_data(), np.random.default_rng(0).normal(size=(N, DIM))
    for filled in (FILLED, np.zeros(SLOTS, bool)):
        grads = jax.grad(lambda q, e: jnp.sum(weights * nearest_neighbours(q, e, filled)), argnums=(0, 1))(
            texts, queue)
        for g in grads:
            np.testing.assert_array_equal(g, 0.0)


@pytest.mark.parametrize("mesh_kind", [None] + MESHES)
def test_nearest_neighbour_loss(mesh_kind):
    images, texts = views()
    queue = queue_data()
    value, grads = value_and_grads(nearest_neighbour_loss, (images, texts, queue, FILLED, SCALE),
                                   (0, 1, 2, 4), mesh_kind,
                                   lambda axis: (P(axis), P(axis), P(None, axis), P(), P()))
    d_images, d_texts, d_queue, d_scale = grads
    loss, dxs, dt = np_nearest_neighbour_loss([f64(v)[0] for v in images], [f64(v)[0] for v in texts],
                                              f64(queue)[0], FILLED, SCALE)
    assert_close(value, (d_images, d_scale), loss, (dxs, dt))
    for g in jax.tree.leaves((d_texts, d_queue)):  # the neighbours are constants
        np.testing.assert_array_equal(g, 0.0)


# ----------------------------------------------------------------------------
# every device holds the loss of the global batch


def test_every_device_gets_the_global_loss():
    mesh, axis = mesh_and_axis("data8")
    images, texts = views()
    queue = queue_data()
    mlm = mlm_inputs()
    sim = simsiam_inputs()

    def per_device(images, texts, queue, mlm, sim):
        terms = (simsiam_loss(*sim, axis), masked_lm_loss(*mlm, axis),
                 image_to_text_loss(images[0], texts[0], SCALE, axis),
                 multi_view_loss(images, texts, SCALE, axis),
                 nearest_neighbour_loss(images, texts, queue, FILLED, SCALE, axis))
        return jnp.stack(terms)[None]

    run = jax.jit(jax.shard_map(per_device, mesh=mesh, out_specs=P(axis),
                                in_specs=(P(axis), P(axis), P(None, axis), P(axis), P(axis))))
    values = np.asarray(run(images, texts, queue, mlm, sim))
    images64, texts64 = [f64(v)[0] for v in images], [f64(v)[0] for v in texts]
    want = [np_simsiam(*f64(*sim))[0], np_masked_lm(f64(mlm[0])[0], mlm[1], f64(mlm[2])[0])[0],
            np_image_to_text(images64[0], texts64[0], SCALE)[0], np_multi_view(images64, texts64, SCALE)[0],
            np_nearest_neighbour_loss(images64, texts64, f64(queue)[0], FILLED, SCALE)[0]]
    assert values.shape == (DEVICES, 5)
    np.testing.assert_array_equal(values, np.broadcast_to(values[0], values.shape))
    np.testing.assert_allclose(values[0], want, rtol=1e-5)
