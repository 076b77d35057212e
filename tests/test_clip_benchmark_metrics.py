"""clip_jax's eval metrics equal CLIP_benchmark's definitions, under CLIP_benchmark's names.

The reference functions restate CLIP_benchmark's code in NumPy float64:
zero-shot `accuracy` (the label among the top-k logits) and
`balanced_accuracy_score` of the top-1 predictions (mean per-class recall);
retrieval `recall_at_k` (a query is a hit when any positive is among its top
k; image_retrieval: captions query images, text_retrieval: images query
captions). They break ties by taking the lower index first, as a stable sort
does; clip_jax counts a tie in the query's favour, so the tests without ties
compare exactly and the tie tests check clip_jax's convention.
"""
import numpy as np
import pytest

from clip_jax.evaluation import retrieval_metrics, run_eval, zeroshot_metrics
from clip_jax.evaluation.report import clip_benchmark_name, clip_benchmark_record, format_table

# Float32 scores of unit vectors are within ~1e-6 of their float64 values: a query whose positive
# is closer than this to another candidate may rank either way.
NEAR_TIE = 1e-5


def _normalize(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _near_ties(scores, positive):
    """bool [Nq]: some non-positive candidate scores within NEAR_TIE of the query's best positive."""
    best = np.where(positive, scores, -np.inf).max(axis=1, keepdims=True)
    return np.any(~positive & (np.abs(scores - best) < NEAR_TIE), axis=1)


def _recall(scores, positive, k):
    """CLIP_benchmark's recall_at_k: any positive among the top k (stable order: lower index first on ties)."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.take_along_axis(positive, top, axis=1).any(axis=1)))


def clip_benchmark_zeroshot(image_embeds, class_embeds, labels):
    """(CLIP_benchmark's acc1, acc5, mean_per_class_recall; the share of images with a near tie)."""
    scores = _normalize(image_embeds) @ _normalize(class_embeds).T
    labels = np.asarray(labels)
    positive = np.arange(len(class_embeds))[None, :] == labels[:, None]
    predicted = np.argsort(-scores, axis=1, kind="stable")[:, 0]
    recalls = [np.mean(predicted[labels == c] == c) for c in np.unique(labels)]
    metrics = {
        "acc1": _recall(scores, positive, 1),
        "acc5": _recall(scores, positive, 5),
        "mean_per_class_recall": float(np.mean(recalls)),
    }
    return metrics, float(np.mean(_near_ties(scores, positive)))


def clip_benchmark_retrieval(image_embeds, text_embeds, text_to_image, ks=(1, 5, 10)):
    """(CLIP_benchmark's image_/text_retrieval_recall@k; the share of queries with a near tie)."""
    scores = _normalize(text_embeds) @ _normalize(image_embeds).T  # [Nt, Ni]
    positive = np.asarray(text_to_image)[:, None] == np.arange(len(image_embeds))[None, :]
    metrics = {}
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = _recall(scores, positive, k)
        metrics[f"text_retrieval_recall@{k}"] = _recall(scores.T, positive.T, k)
    ties = max(np.mean(_near_ties(scores, positive)), np.mean(_near_ties(scores.T, positive.T)))
    return metrics, float(ties)


def _renamed(eval_type, metrics):
    return {clip_benchmark_name(eval_type, k): v for k, v in metrics.items()}


@pytest.mark.parametrize("block_size", [1, 7, 1024])  # query blocks: 103 = 14 * 7 + 5, one each, all at once
def test_zeroshot_equals_clip_benchmark(block_size):
    rng = np.random.default_rng(0)
    classes = rng.normal(size=(10, 16)).astype(np.float32)
    labels = rng.integers(0, 10, 103)
    images = (classes[labels] + 1.5 * rng.normal(size=(103, 16))).astype(np.float32)  # some right, some wrong
    expected, ties = clip_benchmark_zeroshot(images, classes, labels)
    assert ties == 0 and 0.2 < expected["acc1"] < 0.9  # no ties; neither trivial nor hopeless
    ours = _renamed("zeroshot", zeroshot_metrics(images, labels, classes, block_size=block_size))
    assert ours == pytest.approx(expected, abs=1e-12)


def test_zeroshot_ties_count_for_the_image():
    classes = np.eye(4, dtype=np.float32)
    classes[3] = classes[2]  # classes 2 and 3 are indistinguishable
    images = np.eye(4, dtype=np.float32)[[0, 1, 2, 2]]
    labels = np.array([0, 1, 2, 3])
    ours = zeroshot_metrics(images, labels, classes)
    assert ours["top1"] == 1.0 and ours["mean_per_class_recall"] == 1.0  # clip_jax: the tie is a hit
    expected, ties = clip_benchmark_zeroshot(images, classes, labels)
    assert ties == 0.5 and expected["acc1"] == 0.75  # a stable sort puts class 2 first for the last image


@pytest.mark.parametrize("block_size", [1, 4, 1024])
def test_retrieval_with_several_captions_per_image_equals_clip_benchmark(block_size):
    rng = np.random.default_rng(1)
    images = rng.normal(size=(23, 16)).astype(np.float32)
    captions_per_image = rng.integers(1, 6, 23)  # 1 to 5 captions each
    text_to_image = np.repeat(np.arange(23), captions_per_image)
    texts = (images[text_to_image] + 1.2 * rng.normal(size=(len(text_to_image), 16))).astype(np.float32)
    order = rng.permutation(len(texts))  # captions in any order
    texts, text_to_image = texts[order], text_to_image[order]
    expected, ties = clip_benchmark_retrieval(images, texts, text_to_image)
    assert ties == 0 and 0.2 < expected["image_retrieval_recall@1"] < 0.9
    ours = _renamed("retrieval", retrieval_metrics(images, texts, text_to_image, block_size=block_size))
    assert ours == pytest.approx(expected, abs=1e-12)


def test_retrieval_ties_count_for_the_query():
    images = np.eye(3, dtype=np.float32)
    images[2] = images[1]  # two identical images
    texts = np.eye(3, dtype=np.float32)[[0, 1, 1]]
    ours = retrieval_metrics(images, texts, np.array([0, 1, 2]))
    assert ours["t2i_R@1"] == 1.0 and ours["i2t_R@1"] == 1.0


def test_run_eval_over_padded_batches_equals_clip_benchmark():
    """45 rows in batches of 16 (the last padded and masked), encoders called on fixed shapes."""
    rng = np.random.default_rng(2)
    images = rng.normal(size=(45, 8)).astype(np.float32)
    captions = (images + rng.normal(size=(45, 8))).astype(np.float32)
    labels = rng.integers(0, 3, 45)

    def batches(with_captions):
        for start in range(0, 48, 16):
            rows = np.arange(start, start + 16)
            valid = rows < 45
            rows = np.minimum(rows, 44)
            batch = {"images": images[rows], "mask": valid, "labels": labels[rows]}
            if with_captions:
                batch.update(tokens=captions[rows], image_ids=rows)
            yield batch

    def identity(rows):
        assert len(rows) == 16
        return rows

    prompts = rng.normal(size=(3 * 2, 8)).astype(np.float32)  # 3 classes x 2 templates
    tokenizer = lambda texts: prompts[[int(t.split()[-1]) * 2 + (t[0] == "b") for t in texts]]
    zeroshot = run_eval(
        "zeroshot", encode_image=identity, encode_text=lambda rows: rows, tokenizer=tokenizer,
        batches=batches(False), classnames=["0", "1", "2"], templates=["a {}", "b {}"],
    )
    classes = _normalize(prompts).reshape(3, 2, 8).mean(axis=1)
    expected, ties = clip_benchmark_zeroshot(images, classes, labels)
    assert ties == 0 and _renamed("zeroshot", zeroshot) == pytest.approx(expected, abs=1e-12)
    retrieval = run_eval(
        "retrieval", encode_image=identity, encode_text=identity, tokenizer=tokenizer, batches=batches(True)
    )
    expected, ties = clip_benchmark_retrieval(images, captions, np.arange(45))
    assert ties == 0 and _renamed("retrieval", retrieval) == pytest.approx(expected, abs=1e-12)


def test_records_and_table():
    record = clip_benchmark_record(
        "coco", "retrieval", {"i2t_R@5": 0.5, "t2i_R@5": 0.25}, "ViT-B-32", "runs/b32"
    )
    assert record == {
        "dataset": "coco", "model": "ViT-B-32", "pretrained": "runs/b32", "task": "zeroshot_retrieval",
        "metrics": {"text_retrieval_recall@5": 0.5, "image_retrieval_recall@5": 0.25}, "language": "en",
    }
    assert clip_benchmark_name("linear_probe", "top1") == "lp_acc1"
    assert clip_benchmark_name("linear_probe", "l2") == "l2"
    lines = format_table([record]).splitlines()
    assert lines[0].split() == ["dataset", "task", "metric", "value"]
    assert lines[2].split() == ["coco", "zeroshot_retrieval", "text_retrieval_recall@5", "50.00"]
