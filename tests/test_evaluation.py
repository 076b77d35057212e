"""Evaluation: templates, zero-shot, retrieval and the batch-running glue (the linear probe: test_linear_probe.py).

Metrics are checked against independent NumPy computations (argsort-based
top-k and recall) and hand-built embeddings whose answers are known.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import clip_jax
from clip_jax import evaluation
from clip_jax.tokenizers import get_tokenizer

# ---------------------------------------------------------------- helpers


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _numpy_topk(image_embeds, labels, classifier, k):
    """Top-k accuracy by sorting cosine similarities."""
    scores = _unit(image_embeds) @ _unit(classifier).T
    top = np.argsort(-scores, axis=1)[:, :k]
    return float(np.mean((top == labels[:, None]).any(axis=1)))


def _numpy_retrieval(image_embeds, text_embeds, text_to_image, k):
    """(i2t, t2i) recall@k by sorting the full similarity matrix."""
    scores = _unit(image_embeds) @ _unit(text_embeds).T  # [Ni, Nt]
    t2i_order = np.argsort(-scores.T, axis=1)  # images by score, per caption
    t2i = np.mean([text_to_image[t] in t2i_order[t, :k] for t in range(len(text_embeds))])
    i2t_order = np.argsort(-scores, axis=1)  # captions by score, per image
    i2t = np.mean([np.any(text_to_image[i2t_order[i, :k]] == i) for i in range(len(image_embeds))])
    return float(i2t), float(t2i)


class CountingEncoder:
    """A jitted encoder that records the shape of every batch it is given."""

    def __init__(self, fn):
        self.fn = jax.jit(fn)
        self.shapes = []

    def __call__(self, batch):
        self.shapes.append(batch.shape)
        return self.fn(batch)


# ---------------------------------------------------------------- templates


def test_openai_imagenet_templates():
    templates = evaluation.get_templates("openai_imagenet")
    assert len(templates) == 80 and len(set(templates)) == 80
    assert all(t.count("{}") == 1 for t in templates)
    assert templates[0] == "a bad photo of a {}." and templates[-1] == "a tattoo of the {}."
    assert "itap of a {}." in templates
    assert evaluation.get_templates(evaluation.DEFAULT_TEMPLATES) == templates


def test_get_templates_names_lists_and_errors():
    assert evaluation.get_templates("simple") == ("a photo of a {}.",)
    assert evaluation.get_templates(["a {} here", "the {}"]) == ("a {} here", "the {}")
    with pytest.raises(ValueError, match="'imagenet_v9'.*openai_imagenet"):
        evaluation.get_templates("imagenet_v9")
    with pytest.raises(ValueError, match="no placeholder"):
        evaluation.get_templates(["no placeholder"])
    with pytest.raises(ValueError, match="empty"):
        evaluation.get_templates([])


# ---------------------------------------------------------------- batching


def test_batched_encoder_fixed_shapes_and_order():
    encoder = CountingEncoder(lambda x: x * 2.0)
    batched = evaluation.BatchedEncoder(encoder, 4)
    rows = np.arange(22, dtype=np.float32).reshape(11, 2)
    for chunk in (rows[:3], rows[3:3], rows[3:9], rows[9:]):
        batched.add(chunk)
    np.testing.assert_array_equal(batched.result(), rows * 2)
    assert encoder.shapes == [(4, 2)] * 3


# ---------------------------------------------------------------- zero-shot


def _fake_tokenizer(texts):
    """Deterministic: the character codes of each text, zero-padded to 40."""
    tokens = np.zeros((len(texts), 40), np.int32)
    for i, text in enumerate(texts):
        codes = [ord(c) for c in text[:40]]
        tokens[i, : len(codes)] = codes
    return tokens


_TEXT_PROJECTION = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32) / 100


def _fake_encode_text_numpy(tokens):
    return np.sin(tokens.astype(np.float32) @ _TEXT_PROJECTION) + 0.5


def test_zeroshot_classifier_matches_numpy():
    classnames = ["cat", "dog", "traffic light"]
    templates = ["a photo of a {}.", "a {} in a video game.", "itap of my {}.", "a {}", "the plushie {}."]
    encoder = CountingEncoder(lambda tokens: jnp.sin(tokens.astype(jnp.float32) @ _TEXT_PROJECTION) + 0.5)
    classifier = evaluation.zeroshot_classifier(encoder, _fake_tokenizer, classnames, templates, batch_size=7)

    expected = []
    for name in classnames:
        per_template = _unit(_fake_encode_text_numpy(_fake_tokenizer([t.format(name) for t in templates])))
        expected.append(_unit(per_template.mean(axis=0)))
    assert classifier.shape == (3, 6)
    # float32 model against a float64 NumPy mean of unit vectors: a few ulps of 1
    np.testing.assert_allclose(np.asarray(classifier), np.stack(expected), atol=1e-5)
    assert encoder.shapes == [(7, 40)] * 3  # 15 prompts: 7 + 7 + 1 padded to 7

    one_batch = evaluation.zeroshot_classifier(encoder, _fake_tokenizer, classnames, templates)
    # the same float32 sums over templates, batched differently: ulps of 1
    np.testing.assert_allclose(np.asarray(one_batch), np.asarray(classifier), atol=1e-6)
    assert encoder.shapes[-1] == (15, 40)  # batch_size clipped to the prompt count


def test_zeroshot_metrics_separable_clusters():
    rng = np.random.default_rng(1)
    classifier = np.eye(8, 16)
    labels = np.repeat(np.arange(8), 5)
    images = 3.0 * classifier[labels] + 0.1 * rng.normal(size=(40, 16))
    metrics = evaluation.zeroshot_metrics(images, labels, classifier)
    assert metrics == {"top1": 1.0, "top5": 1.0, "mean_per_class_recall": 1.0}


def test_zeroshot_metrics_match_numpy():
    rng = np.random.default_rng(2)
    num_classes = 12
    classifier = rng.normal(size=(num_classes, 16))
    labels = rng.choice(num_classes - 1, size=300, p=np.linspace(1, 3, num_classes - 1) / 22)  # class 11 absent
    images = classifier[labels] + 2.0 * rng.normal(size=(300, 16))
    metrics = evaluation.zeroshot_metrics(images, labels, classifier, topk=(1, 3, 5), block_size=64)

    for k in (1, 3, 5):
        assert metrics[f"top{k}"] == pytest.approx(_numpy_topk(images, labels, classifier, k))
    assert 0.2 < metrics["top1"] < 0.9  # a non-trivial case
    predicted = np.argmax(_unit(images) @ _unit(classifier).T, axis=1)
    recalls = [np.mean(predicted[labels == c] == c) for c in range(num_classes - 1)]
    assert metrics["mean_per_class_recall"] == pytest.approx(np.mean(recalls))


def test_zeroshot_topk_clipped_to_num_classes():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 50)
    metrics = evaluation.zeroshot_metrics(rng.normal(size=(50, 4)), labels, rng.normal(size=(3, 4)))
    assert metrics["top5"] == 1.0
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        evaluation.zeroshot_metrics(rng.normal(size=(2, 4)), np.array([0, 3]), rng.normal(size=(3, 4)))


# ---------------------------------------------------------------- retrieval


def test_retrieval_known_permutation():
    # One-hot embeddings: caption t points exactly at image t, but captions
    # 6..9 are labelled as belonging to the next image in a cycle. A wrong
    # caption scores 1 on a foreign image and 0 (tied last) on its own, so
    # those queries miss at R@1 and hit from R@2 on.
    embeds = np.eye(10)
    text_to_image = np.array([0, 1, 2, 3, 4, 5, 7, 8, 9, 6])
    metrics = evaluation.retrieval_metrics(embeds, embeds, text_to_image)
    assert metrics == {"i2t_R@1": 0.6, "i2t_R@5": 1.0, "i2t_R@10": 1.0, "t2i_R@1": 0.6, "t2i_R@5": 1.0, "t2i_R@10": 1.0}
    perfect = evaluation.retrieval_metrics(embeds, embeds[text_to_image], text_to_image)
    assert set(perfect.values()) == {1.0}


@pytest.mark.parametrize("block_size", [7, 1024])
def test_retrieval_matches_bruteforce(block_size):
    rng = np.random.default_rng(4)
    num_images, dim = 40, 12
    text_to_image = np.concatenate([np.arange(num_images), rng.integers(0, num_images, 3 * num_images)])
    rng.shuffle(text_to_image)
    images = rng.normal(size=(num_images, dim))
    texts = images[text_to_image] + 1.5 * rng.normal(size=(len(text_to_image), dim))
    metrics = evaluation.retrieval_metrics(images, texts, text_to_image, block_size=block_size)
    for k in (1, 5, 10):
        i2t, t2i = _numpy_retrieval(images, texts, text_to_image, k)
        assert metrics[f"i2t_R@{k}"] == pytest.approx(i2t)
        assert metrics[f"t2i_R@{k}"] == pytest.approx(t2i)
    assert 0.1 < metrics["t2i_R@1"] < 0.9


def test_ranking_memory_is_blocked():
    n, dim, block = 8192, 64, 256
    shapes = (
        jax.ShapeDtypeStruct((n, dim), jnp.float32),
        jax.ShapeDtypeStruct((n,), jnp.int32),
        jax.ShapeDtypeStruct((n, dim), jnp.float32),
        jax.ShapeDtypeStruct((n,), jnp.int32),
    )
    compiled = evaluation.positive_ranks.lower(*shapes, block_size=block).compile()
    assert compiled.memory_analysis().temp_size_in_bytes < n * n * 4 / 8  # full score matrix: 256 MiB


def test_retrieval_validation():
    embeds = np.eye(3)
    with pytest.raises(ValueError, match="1 of 3 images have no caption"):
        evaluation.retrieval_metrics(embeds, embeds, np.array([0, 1, 1]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        evaluation.retrieval_metrics(embeds, embeds, np.array([0, 1, 3]))
    with pytest.raises(ValueError, match="2 entries for 3 captions"):
        evaluation.retrieval_metrics(embeds, embeds, np.array([0, 1]))


# ---------------------------------------------------------------- glue, fake encoders


def _padded(x, size, value):
    """x [n, ...] -> [size, ...], the extra rows filled with value."""
    x = np.asarray(x)
    return np.concatenate([x, np.full((size - len(x), *x.shape[1:]), value, x.dtype)])


def _image_batches(images, labels, batch_size):
    """Fixed-size batches; the last is padded with NaN images, label -1 and mask False."""
    for start in range(0, len(images), batch_size):
        rows = slice(start, start + batch_size)
        yield {
            "images": _padded(images[rows], batch_size, np.nan),
            "labels": _padded(labels[rows], batch_size, -1),
            "mask": np.arange(start, start + batch_size) < len(images),
        }


def test_embed_images_drops_padding_rows():
    rng = np.random.default_rng(6)
    images = rng.normal(size=(11, 2, 2, 3)).astype(np.float32)
    labels = rng.integers(0, 4, 11)
    encoder = CountingEncoder(lambda x: x.reshape(len(x), -1) * 3.0)
    embeds, got_labels = evaluation.embed_images(encoder, _image_batches(images, labels, 4))
    np.testing.assert_allclose(embeds, images.reshape(11, -1) * 3.0, rtol=1e-6)  # one float32 multiply: 1 ulp
    np.testing.assert_array_equal(got_labels, labels)
    assert encoder.shapes == [(4, 2, 2, 3)] * 3

    text_embeds, no_labels = evaluation.embed_texts(encoder, [{"tokens": np.ones((2, 5), np.int32)}])
    assert text_embeds.shape == (2, 5) and no_labels is None


def test_embed_errors_name_fields():
    encode = lambda x: jnp.asarray(x, jnp.float32).reshape(len(x), -1)  # noqa: E731
    with pytest.raises(ValueError, match=r"\['images'\].*\['tokens'\]"):
        evaluation.embed_images(encode, [{"tokens": np.zeros((2, 3))}])
    with pytest.raises(ValueError, match="'labels' is in 1 of 2 batches"):
        labelled, unlabelled = {"images": np.zeros((2, 3)), "labels": np.zeros(2)}, {"images": np.zeros((2, 3))}
        evaluation.embed_images(encode, [labelled, unlabelled])
    with pytest.raises(ValueError, match="no batches"):
        evaluation.embed_images(encode, [])
    with pytest.raises(ValueError, match=r"\['image_ids'\]"):
        evaluation.embed_retrieval(encode, encode, [{"images": np.zeros((2, 3)), "tokens": np.zeros((2, 3))}])


# ---------------------------------------------------------------- run_eval with the real tiny model


@pytest.fixture(scope="module")
def tiny():
    model = clip_jax.create_model("ViT-Tiny-8")
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 77), jnp.int32))
    return dict(
        encode_image=CountingEncoder(lambda x: model.apply(variables, x, method=model.encode_image)),
        encode_text=CountingEncoder(lambda t: model.apply(variables, t, method=model.encode_text)),
        tokenizer=get_tokenizer("clip", 77),
    )


def _direct(encoder, x, batch_size):
    """Plain encoding in chunks of batch_size (zero-padded), reusing the shapes already compiled."""
    chunks = [_padded(x[i : i + batch_size], batch_size, 0) for i in range(0, len(x), batch_size)]
    return np.concatenate([np.asarray(encoder.fn(chunk)) for chunk in chunks])[: len(x)]


def _random_images(rng, n):
    return rng.normal(size=(n, 32, 32, 3)).astype(np.float32)


def test_run_eval_zeroshot_tiny_model(tiny):
    rng = np.random.default_rng(7)
    images, labels = _random_images(rng, 13), rng.integers(0, 8, 13)
    classnames = ["cat", "dog", "car", "ship", "bird", "frog", "horse", "truck"]  # 8 prompts, as retrieval's batches
    metrics = evaluation.run_eval(
        "zeroshot", **tiny, batches=_image_batches(images, labels, 8), classnames=classnames, templates="simple"
    )
    assert set(metrics) == {"top1", "top5", "mean_per_class_recall"}
    assert all(np.isfinite(v) and 0 <= v <= 1 for v in metrics.values())  # NaN padding images were dropped
    assert metrics["top1"] <= metrics["top5"]

    image_embeds, _ = evaluation.embed_images(tiny["encode_image"], _image_batches(images, labels, 8))
    # the same model on other batch compositions: XLA may tile the matmuls differently, float32 ulps of ~1
    np.testing.assert_allclose(image_embeds, _direct(tiny["encode_image"], images, 8), atol=1e-5)


def test_run_eval_retrieval_tiny_model_dedupes_images(tiny):
    rng = np.random.default_rng(8)
    images = _random_images(rng, 6)
    text_to_image = np.array([0, 0, 1, 2, 2, 2, 3, 4, 4, 5, 5])
    captions = [f"caption {i} of image {j}" for i, j in enumerate(text_to_image)]
    tokens = tiny["tokenizer"](captions)
    batches = [
        {  # one row per caption, its image repeated; padding rows have NaN images and an unknown id
            "images": _padded(images[text_to_image[rows]], 8, np.nan),
            "tokens": _padded(tokens[rows], 8, 0),
            "image_ids": _padded(text_to_image[rows] + 1000, 8, 99),
            "mask": np.arange(rows.start, rows.stop) < 11,
        }
        for rows in (slice(0, 8), slice(8, 16))
    ]
    tiny["encode_image"].shapes.clear()
    metrics = evaluation.run_eval("retrieval", **tiny, batches=batches)
    assert set(metrics) == {f"{d}_R@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)}
    assert tiny["encode_image"].shapes == [(8, 32, 32, 3)]  # 6 unique images in one call, not 11 rows

    expected = evaluation.retrieval_metrics(
        _direct(tiny["encode_image"], images, 8), _direct(tiny["encode_text"], tokens, 8), text_to_image
    )
    assert metrics == pytest.approx(expected)
    assert metrics["t2i_R@10"] == 1.0  # only 6 images


def test_run_eval_linear_probe_tiny_model(tiny):
    rng = np.random.default_rng(9)
    train, test = _random_images(rng, 24), _random_images(rng, 13)
    train_labels, test_labels = rng.integers(0, 2, 24), rng.integers(0, 2, 13)
    metrics = evaluation.run_eval(
        "linear_probe",
        **tiny,
        batches=_image_batches(test, test_labels, 8),
        train_batches=_image_batches(train, train_labels, 8),
    )
    assert set(metrics) == {"top1", "val_top1", "l2"} and 0 <= metrics["top1"] <= 1

    val, val_labels = _random_images(rng, 10), rng.integers(0, 2, 10)
    with_val = evaluation.run_eval(
        "linear_probe",
        **tiny,
        batches=_image_batches(test, test_labels, 8),
        train_batches=_image_batches(train, train_labels, 8),
        val_batches=_image_batches(val, val_labels, 8),
    )
    encode = lambda x: _direct(tiny["encode_image"], x, 8)  # noqa: E731
    expected = evaluation.linear_probe(
        encode(train), train_labels, encode(test), test_labels, val_features=encode(val), val_labels=val_labels
    )
    assert with_val == expected


def test_run_eval_errors(tiny):
    images = {"images": np.zeros((2, 32, 32, 3), np.float32)}
    with pytest.raises(ValueError, match="'knn'.*zeroshot"):
        evaluation.run_eval("knn", **tiny, batches=[images])
    with pytest.raises(ValueError, match="classnames"):
        evaluation.run_eval("zeroshot", **tiny, batches=[images])
    with pytest.raises(ValueError, match="train_batches"):
        evaluation.run_eval("linear_probe", **tiny, batches=[images])
    with pytest.raises(ValueError, match="'labels' field"):
        evaluation.run_eval("zeroshot", **tiny, batches=[images], classnames=["a", "b"], templates="simple")


def test_run_eval_retrieval_image_rows_equal_caption_rows(tiny):
    """The input pipeline's layout (tokens [B, K, L] + caption_mask) gives the caption-row metrics."""
    rng = np.random.default_rng(8)
    images = _random_images(rng, 6)
    text_to_image = np.array([0, 0, 1, 2, 2, 2, 3, 4, 4, 5, 5])
    tokens = tiny["tokenizer"]([f"caption {i} of image {j}" for i, j in enumerate(text_to_image)])
    per_image = np.zeros((6, 3, tokens.shape[1]), np.int32)
    caption_mask = np.zeros((6, 3), bool)
    for image in range(6):
        rows = np.flatnonzero(text_to_image == image)
        per_image[image, : len(rows)] = tokens[rows]
        caption_mask[image, : len(rows)] = True
    batches = [
        {
            "images": _padded(images[rows], 4, np.nan),
            "tokens": _padded(per_image[rows], 4, 0),
            "caption_mask": _padded(caption_mask[rows], 4, False),
            "mask": np.arange(rows.start, rows.stop) < 6,
        }
        for rows in (slice(0, 4), slice(4, 8))
    ]
    metrics = evaluation.run_eval("retrieval", **tiny, batches=batches)
    expected = evaluation.retrieval_metrics(
        _direct(tiny["encode_image"], images, 8), _direct(tiny["encode_text"], tokens, 8), text_to_image
    )
    assert metrics == pytest.approx(expected, abs=1e-6)  # recalls are counts / N: equal unless a near-tie flips


def test_canonical_order_ignores_the_arrangement_of_rows():
    from clip_jax.evaluation.in_loop import canonical_order

    rng = np.random.default_rng(0)
    rows = {"images": rng.normal(size=(9, 4)).astype(np.float32), "labels": rng.integers(0, 3, 9)}
    rows["images"][5] = rows["images"][2]  # equal embeddings, told apart by the label
    permutation = rng.permutation(9)
    shuffled = {k: v[permutation] for k, v in rows.items()}
    ordered = [{k: v[canonical_order(r)] for k, v in r.items()} for r in (rows, shuffled)]
    for k in rows:
        np.testing.assert_array_equal(ordered[0][k], ordered[1][k])


def test_lockstep_pads_with_masked_blanks_and_local_batch_size():
    from clip_jax.evaluation.in_loop import local_batch_size, lockstep

    batches = [{"images": np.ones((2, 3)), "mask": np.array([True, False])}] * 2
    steps = lockstep(batches)
    assert [more for _, more in (next(steps), next(steps))] == [True, False]
    blank, more = next(steps)
    assert not more and not blank["mask"].any() and blank["images"].shape == (2, 3) and not blank["images"].any()
    assert local_batch_size(16, 8, 2) == 8 and local_batch_size(10, 8, 2) == 8 and local_batch_size(10, 4, 1) == 12
    with pytest.raises(ValueError, match="do not split evenly"):
        local_batch_size(16, 2, 4)
