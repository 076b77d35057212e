"""Linear probe (CLIP, appendix A.3): the L-BFGS fit, the L2 search, the validation split and the refit.

The fit is checked against an independent float64 Newton solver of the same
objective; the search against hand-derived visit orders and a brute force over
all 97 grid values; the splits and the refit by recording every fit call.
"""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from clip_jax import evaluation

# `evaluation.linear_probe` is the function; the module is reached by name.
lp = importlib.import_module("clip_jax.evaluation.linear_probe")


class RecordingFit:
    """Wraps lp.fit: records (weights, l2, init, result) of every call, in order."""

    def __init__(self, monkeypatch):
        self.fit, self.calls = lp.fit, []
        monkeypatch.setattr(lp, "fit", self)

    def __call__(self, features, labels, weights, l2, init, *args):
        params = self.fit(features, labels, weights, l2, init, *args)
        self.calls.append(dict(features=np.asarray(features), weights=np.asarray(weights), l2=l2, params=params))
        return params


def _numpy_accuracy(params, features, labels):
    logits = np.asarray(features, np.float64) @ np.asarray(params["w"], np.float64) + np.asarray(params["b"])
    return float(np.mean(logits.argmax(axis=1) == labels))


def _clusters(rng, labels, dim, spread):
    centers = rng.normal(size=(labels.max() + 1, dim)) * 4
    return centers[labels] + spread * rng.normal(size=(len(labels), dim))


# ---------------------------------------------------------------- the fit


def _newton_reference(x, y, num_classes, l2):
    """float64 Newton's method on sum CE + 0.5 * l2 * ||W||^2, divided by N (b unregularised).

    The Hessian is singular along b + c * 1 (softmax ignores a common shift),
    the gradient has no component there, so the step uses the pseudo-inverse;
    backtracking keeps every step a descent. Returns (theta [E + 1, C] with
    the bias as last row, objective, gradient, Hessian) as functions of theta.
    """
    n, dim = x.shape
    x1 = np.concatenate([x, np.ones((n, 1))], axis=1)
    onehot = np.eye(num_classes)[y]
    penalised = np.ones((dim + 1, num_classes))
    penalised[-1] = 0.0

    def probabilities(theta):
        logits = x1 @ theta
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        return p / p.sum(axis=1, keepdims=True)

    def objective(theta):
        logits = x1 @ theta
        top = logits.max(axis=1)
        log_z = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
        return (np.sum(log_z - logits[np.arange(n), y]) + 0.5 * l2 * np.sum(penalised * theta**2)) / n

    def gradient(theta):
        return (x1.T @ (probabilities(theta) - onehot) + l2 * penalised * theta) / n

    def hessian(theta):
        p = probabilities(theta)
        per_row = np.einsum("ik,kl->ikl", p, np.eye(num_classes)) - np.einsum("ik,il->ikl", p, p)
        h = np.einsum("ia,ib,ikl->akbl", x1, x1, per_row).reshape((dim + 1) * num_classes, -1)
        return (h + l2 * np.diag(penalised.ravel())) / n

    theta = np.zeros((dim + 1, num_classes))
    for _ in range(100):
        g = gradient(theta)
        if np.abs(g).max() < 1e-13:
            break
        step = -(np.linalg.pinv(hessian(theta)) @ g.ravel()).reshape(theta.shape)
        size = 1.0
        while objective(theta + size * step) > objective(theta) + 1e-4 * size * np.sum(g * step):
            size /= 2
        theta = theta + size * step
    return theta, objective, gradient, hessian


@pytest.mark.parametrize("l2", [1e-2, 1.0, 100.0])
def test_fit_reaches_the_optimum_of_the_objective(l2):
    """lp.fit at a fixed l2 lands within its stopping tolerance of the float64 Newton optimum."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 40)
    features = _clusters(rng, labels, 4, 4.0) / 4  # overlapping classes: a finite optimum even at small l2
    theta_star, objective, gradient, hessian = _newton_reference(features, labels, 3, l2)
    assert np.abs(gradient(theta_star)).max() < 1e-12

    tol = 1e-4
    zeros = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}
    params, iterations = lp._fit(
        jnp.asarray(features, jnp.float32), jnp.asarray(labels), jnp.ones(40), jnp.float32(l2), zeros,
        jnp.int32(1000), jnp.float32(tol),
    )
    assert int(iterations) < 1000
    theta = np.concatenate([np.asarray(params["w"]), np.asarray(params["b"])[None]]).astype(np.float64)
    g = gradient(theta)
    # It stopped on its float32 gradient (max |g| <= tol); the float64 gradient at the same point differs
    # by the rounding of float32 means of terms |x (p - y)| <= ~4: well under 1e-5.
    assert np.abs(g).max() <= tol + 1e-5

    # Strong convexity off the b-shift direction (the Hessian's one zero eigenvalue): with mu its smallest
    # other eigenvalue, ||theta - theta*|| <= ||g|| / mu and f(theta) - f* <= ||g||^2 / (2 mu). mu is taken
    # at both ends (the smaller), and a factor 2 covers its variation along the segment between them.
    mu = min(np.linalg.eigvalsh(hessian(t))[1] for t in (theta, theta_star))
    assert np.linalg.eigvalsh(hessian(theta_star))[0] < 1e-12 * mu
    centered = lambda t: np.concatenate([t[:-1], t[-1:] - t[-1].mean()])  # noqa: E731 (b up to a shift)
    assert np.linalg.norm(centered(theta) - centered(theta_star)) <= 2 * np.linalg.norm(g) / mu
    assert objective(theta) - objective(theta_star) <= 2 * np.linalg.norm(g) ** 2 / (2 * mu) + 1e-12
    # and the JAX objective is the reference's, evaluated in float32 (a few ulps of a value ~1)
    value = lp.objective(params, jnp.asarray(features, jnp.float32), jnp.asarray(labels), jnp.ones(40), l2)
    assert float(value) == pytest.approx(objective(theta), abs=1e-5)


def test_fit_bias_is_not_regularised():
    """With an enormous l2, W is ~0 and b alone fits the class frequencies: softmax(b) = frequencies."""
    labels = np.repeat([0, 1, 2], [10, 30, 60])
    features = np.random.default_rng(1).normal(size=(100, 3))
    zeros = {"w": jnp.zeros((3, 3)), "b": jnp.zeros(3)}
    params = lp.fit(jnp.asarray(features, jnp.float32), jnp.asarray(labels), jnp.ones(100), 1e6, zeros)
    assert np.abs(np.asarray(params["w"])).max() < 1e-3
    # the b-gradient is softmax(b) - frequencies (W ~ 0), below tol = 1e-4 at the stop, plus W's ~1e-3 effect
    np.testing.assert_allclose(jax.nn.softmax(params["b"]), [0.1, 0.3, 0.6], atol=2e-3)


# ---------------------------------------------------------------- the search


def test_search_visits_clips_sequence():
    """Peak at k = 13 (l2 = 10^(13/8)): the 7 starting values, then best +- 8, 4, 2, 1, ties to the larger l2."""
    calls = []

    def score(k, warm):
        calls.append((k, warm))
        return -abs(k - 13)

    best, visited = lp.search_l2(score)
    # start 48..-48 (best 16, score -3); s=8: 24 (-11), 8 (-5), best 16; s=4: 20 (-7), 12 (-1), best 12;
    # s=2: 14 (-1), 10 (-3), best 14 (ties with 12, the larger l2 wins); s=1: 15 (-2), 13 (0), best 13.
    assert visited == [48, 32, 16, 0, -16, -32, -48, 24, 8, 20, 12, 14, 10, 15, 13]
    assert calls == list(zip(visited, [None, 48, 32, 16, 0, -16, -32, 16, 16, 16, 16, 12, 12, 14, 14]))
    assert best == 13 and lp.l2_value(best) == pytest.approx(10 ** (13 / 8))


def test_search_grid_and_edges():
    grid = lp.l2_grid()
    assert len(grid) == 97 and grid[0] == pytest.approx(1e-6) and grid[-1] == pytest.approx(1e6)
    np.testing.assert_allclose(np.diff(np.log10(grid)), 1 / 8)
    assert [lp.l2_value(k) for k in range(-48, 49, 16)] == pytest.approx([1e-6, 1e-4, 1e-2, 1, 1e2, 1e4, 1e6])
    # a peak at the edge: neighbours outside [10^-6, 10^6] are skipped
    best, visited = lp.search_l2(lambda k, warm: k)
    assert best == 48 and visited == [48, 32, 16, 0, -16, -32, -48, 40, 44, 46, 47]
    # all equal: the largest l2 wins every tie
    best, visited = lp.search_l2(lambda k, warm: 0.5)
    assert best == 48 and visited == [48, 32, 16, 0, -16, -32, -48, 40, 44, 46, 47]


def test_search_finds_the_argmax_of_every_strictly_unimodal_score():
    """Brute force over the 97 grid points: for each peak position the search finds it in <= 15 scores."""
    for peak in range(-48, 49):
        for left, right in ((1.0, 0.7), (0.3, 2.0)):
            scores = {k: -(left if k < peak else right) * abs(k - peak) for k in range(-48, 49)}
            best, visited = lp.search_l2(lambda k, warm: scores[k])
            assert best == max(scores, key=scores.get) == peak
            assert len(visited) == len(set(visited)) <= 15


def _threshold_problem(peak_index):
    """A 1-D two-class problem whose validation accuracy over the 97 l2 values peaks at peak_index.

    Train: class 0 around -1 (30 rows), class 1 around +1 (60 rows). The fitted
    decision threshold t(l2) = -(b1 - b0) / (w1 - w0) moves monotonically left
    as l2 grows (towards predicting the majority class everywhere). A
    validation row sits midway between consecutive thresholds t(j), t(j + 1)
    where they are at least 0.02 apart (so fits within tolerance of each
    other agree on it): class 1 for j < peak_index (correct from l2 index
    j + 1 on), class 0 for j >= peak_index (correct up to j). The validation
    accuracy rises to 100% at peak_index and falls after: strictly unimodal
    where the thresholds move, flat below.
    """
    rng = np.random.default_rng(0)
    train_labels = np.repeat([0, 1], [30, 60])
    train = (np.where(train_labels == 1, 1.0, -1.0) + rng.normal(size=90))[:, None]
    x, y = jnp.asarray(train, jnp.float32), jnp.asarray(train_labels)
    zeros = {"w": jnp.zeros((1, 2)), "b": jnp.zeros(2)}
    thresholds = []
    for k in range(-48, 49):
        params = lp.fit(x, y, jnp.ones(90), lp.l2_value(k), zeros)
        thresholds.append(-float(params["b"][1] - params["b"][0]) / float(params["w"][0, 1] - params["w"][0, 0]))
    thresholds = np.array(thresholds)
    assert np.all(np.diff(thresholds) < 1e-6)
    rows = [j for j in range(96) if thresholds[j] - thresholds[j + 1] >= 0.02]
    val = np.array([(thresholds[j] + thresholds[j + 1]) / 2 for j in rows])[:, None]
    val_labels = np.array([1 if j < peak_index else 0 for j in rows])
    return train, train_labels, val, val_labels


def test_linear_probe_search_matches_brute_force(monkeypatch):
    """The search inside linear_probe picks the brute-force best of all 97 l2 values, visiting CLIP's sequence."""
    peak = 75  # l2 = 10^(27/8)
    train, train_labels, val, val_labels = _threshold_problem(peak)
    x = jnp.asarray(np.concatenate([train, val]), jnp.float32)
    y = jnp.asarray(np.concatenate([train_labels, val_labels]))
    weights = jnp.asarray(np.arange(len(y)) < len(train), jnp.float32)
    zeros = {"w": jnp.zeros((1, 2)), "b": jnp.zeros(2)}
    brute = [_numpy_accuracy(lp.fit(x, y, weights, l2, zeros), val, val_labels) for l2 in lp.l2_grid()]
    rise, fall = np.diff(brute[: peak + 1]), np.diff(brute[peak:])
    assert np.all(rise >= 0) and np.all(fall < 0) and brute[peak] == 1.0  # unimodal, peak where built
    assert np.all(rise[-20:] > 0)  # strictly rising for the last 20 steps: the peak is not on a plateau

    recorder = RecordingFit(monkeypatch)
    result = lp.linear_probe(train, train_labels, val[:5], val_labels[:5], val_features=val, val_labels=val_labels)
    assert result["l2"] == lp.l2_value(peak - 48) and result["val_top1"] == 1.0
    _, expected = lp.search_l2(lambda k, warm: brute[k + 48])
    assert [c["l2"] for c in recorder.calls] == [lp.l2_value(k) for k in expected] + [result["l2"]]


# ---------------------------------------------------------------- validation split and refit


def _three_class_problem(seed, n_train, n_val, n_test, spread=6.0):
    """Three Gaussian clusters in 5-D (centres ~4 apart per axis), overlapping at the default spread."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n_train + n_val + n_test)
    features = _clusters(rng, labels, 5, spread)
    cut = np.cumsum([n_train, n_val])
    return np.split(features, cut), np.split(labels, cut)


def test_explicit_validation_set(monkeypatch):
    """Search fits see only the train rows and are scored on the val rows; the refit sees train + val."""
    (train, val, test), (train_y, val_y, test_y) = _three_class_problem(2, 50, 30, 40)
    recorder = RecordingFit(monkeypatch)
    result = lp.linear_probe(train, train_y, test, test_y, val_features=val, val_labels=val_y)
    *search, final = recorder.calls
    stacked = np.concatenate([train, val]).astype(np.float32)
    assert len(search) == 15  # 7 starting values + 2 per halving (none at an edge here)
    for call in search:
        np.testing.assert_array_equal(call["features"], stacked)
        np.testing.assert_array_equal(call["weights"], np.arange(80) < 50)
    chosen = next(c for c in search if c["l2"] == result["l2"])
    assert result["val_top1"] == _numpy_accuracy(chosen["params"], val, val_y)
    assert max(_numpy_accuracy(c["params"], val, val_y) for c in search) == result["val_top1"]
    np.testing.assert_array_equal(final["weights"], np.ones(80))
    assert final["l2"] == result["l2"]
    assert result["top1"] == _numpy_accuracy(final["params"], test, test_y)


def test_held_out_split_from_train_rows(monkeypatch):
    """Without a val set: a seeded round(0.2 N) of the train rows is held out, the same for the same seed."""
    (train, _, test), (train_y, _, test_y) = _three_class_problem(3, 60, 0, 40)
    masks = {}
    for seed in (0, 0, 1):
        recorder = RecordingFit(monkeypatch)
        lp.linear_probe(train, train_y, test, test_y, seed=seed)
        *search, final = recorder.calls
        held_out = search[0]["weights"] == 0
        assert held_out.sum() == 12 and all(np.array_equal(c["weights"] == 0, held_out) for c in search)
        np.testing.assert_array_equal(final["weights"], np.ones(60))  # refit on all train rows
        np.testing.assert_array_equal(final["features"], train.astype(np.float32))
        np.testing.assert_array_equal(masks.setdefault(seed, held_out), held_out)
    assert not np.array_equal(masks[0], masks[1])
    np.testing.assert_array_equal(masks[0], lp._validation_mask(60, 0.2, 0))


def test_refit_uses_the_validation_rows(monkeypatch):
    """Class 2 only in the val set: the search's fits never predict it, the refit on train + val does."""
    (train, val, test), (train_y, val_y, test_y) = _three_class_problem(4, 200, 100, 200, spread=1.0)
    keep = train_y != 2
    train, train_y = train[keep], train_y[keep]
    test, test_y = test[test_y == 2], test_y[test_y == 2]
    recorder = RecordingFit(monkeypatch)
    result = lp.linear_probe(train, train_y, test, test_y, val_features=val, val_labels=val_y)
    # classes 0 and 1 are separable, class 2 (41 of the 100 val rows) is never predicted: 59% for every l2
    # up to the largest that still separates 0 from 1, which the tie rule picks
    assert result["val_top1"] == 0.59
    chosen = next(c for c in recorder.calls[:-1] if c["l2"] == result["l2"])
    assert _numpy_accuracy(chosen["params"], test, test_y) == 0.0
    assert result["top1"] > 0.1  # the refit has seen class 2 (at this strong l2, only its clearest rows)


def test_linear_probe_separable_and_random_labels():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 6, 500)
    features = _clusters(rng, labels, 24, 1.0)
    separable = evaluation.linear_probe(features[:300], labels[:300], features[300:], labels[300:])
    assert separable["top1"] == 1.0 and separable["val_top1"] == 1.0

    random_labels = rng.integers(0, 6, 500)
    chance = evaluation.linear_probe(features[:300], random_labels[:300], features[300:], random_labels[300:])
    # 200 test rows, chance 1/6: the standard deviation of the accuracy is sqrt(1/6 * 5/6 / 200) = 0.026
    assert abs(chance["top1"] - 1 / 6) < 0.08
    assert set(chance) == {"top1", "val_top1", "l2"} and chance["l2"] in lp.l2_grid()


def test_deterministic_and_compiled_once_per_shape():
    (train, val, test), (train_y, val_y, test_y) = _three_class_problem(6, 37, 0, 11)  # shapes of this test only
    before = lp._fit._cache_size()
    first = lp.linear_probe(train, train_y, test, test_y)
    assert lp._fit._cache_size() == before + 1  # 15 search fits and the refit: one compilation
    second = lp.linear_probe(train, train_y, test, test_y)
    assert second == first and lp._fit._cache_size() == before + 1


def test_errors():
    x, y = np.zeros((4, 2)), np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="both val_features and val_labels"):
        lp.linear_probe(x, y, x, y, val_features=x)
    with pytest.raises(ValueError, match="at least 2 train rows"):
        lp.linear_probe(x[:1], y[:1], x, y)


def test_config_accepts_val_data_for_linear_probes_only():
    from clip_jax.config import ConfigError, default_config
    from clip_jax.config.validation import validate

    config = default_config()
    probe = dict(type="linear_probe", data="tfds:cifar10:test", train_data="tfds:cifar10:train", every_steps=10)
    config.evals = ConfigDict({"probe": dict(probe, val_data="tfds:cifar10:train[45000:]")})
    validate(config)
    config.evals = ConfigDict({"probe": dict(probe, val_data="")})
    with pytest.raises(ConfigError, match="config.evals.probe.val_data"):
        validate(config)
    retrieval = dict(type="retrieval", data="tfds:coco_captions:val", val_data="x", every_steps=1)
    config.evals = ConfigDict({"coco": retrieval})
    with pytest.raises(ConfigError, match="config.evals.coco.val_data: only a linear probe"):
        validate(config)


def test_in_loop_eval_threads_val_data(monkeypatch):
    """EvalTask.evaluate embeds spec.val_data and hands it to the probe as its validation set."""
    from clip_jax.evaluation import in_loop

    (train, val, test), (train_y, val_y, test_y) = _three_class_problem(7, 40, 20, 30)
    rows = {"train": (train, train_y), "val": (val, val_y), "test": (test, test_y)}

    class Stub:  # pipeline(source).iterator() -> the source's name; embed_shares -> its rows
        def __init__(self, source):
            self.source = source

        def iterator(self):
            return self.source

    monkeypatch.setattr(in_loop.EvalTask, "pipeline", lambda self, config, size, source, labels, batch: Stub(source))
    monkeypatch.setattr(
        in_loop, "embed_shares", lambda encoders, variables, source, *_: dict(zip(("images", "labels"), rows[source]))
    )
    config = ConfigDict({"data": {"tokenizer": "clip", "context_length": 77}})
    encoders = type("Encoders", (), {"shards": 1})()
    spec = dict(type="linear_probe", data="test", train_data="train", every_steps=1)
    with_val = in_loop.EvalTask("probe", ConfigDict(dict(spec, val_data="val"))).evaluate(config, 32, {}, encoders)
    assert with_val == lp.linear_probe(train, train_y, test, test_y, val_features=val, val_labels=val_y)
    held_out = in_loop.EvalTask("probe", ConfigDict(spec)).evaluate(config, 32, {}, encoders)
    assert held_out == lp.linear_probe(train, train_y, test, test_y)
