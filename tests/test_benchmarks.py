"""Shipped zero-shot metadata in TFDS label order, zero-shot evals without class lists, missing datasets named,
optional evals skipped.

TFDS's label names come from the installed tensorflow_datasets (builders read
offline in an empty data dir, no data needed). The in-loop evals read a
prepared fake `cifar10` (20 random images written with TFDS's own writer into
a temporary data dir) through the real TFDS source.
"""
import logging
import os
import re

import numpy as np
import pytest

from clip_jax.evaluation import benchmarks
from clip_jax.evaluation.templates import OPENAI_IMAGENET_TEMPLATES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Pairs of TFDS label and shipped name that share no word, each checked by hand to be the same class.
SAME_CLASS = {
    ("caltech101", "faces_easy"): "centered face",
    ("eurosat", "HerbaceousVegetation"): "brushland or shrubland",
    ("oxford_flowers102", "ball moss"): "air plant",
}
# Where the shipped order differs from OpenAI's or torchvision's lists: (dataset, label) -> name.
ORDER_TRAPS = {
    ("oxford_iiit_pet", 1): "American Bulldog",  # TFDS sorts cats and dogs together; OpenAI's list: "Bengal"
    ("food101", 16): "cheesecake",  # before "cheese plate" in TFDS
    ("sun397", 206): "jail indoor",  # before "jail cell" in TFDS
    ("caltech101", 4): "background",  # TFDS: lower-case, alphabetical, background_google included
    ("eurosat", 0): "annual crop land",  # OpenAI's list starts with "forest"
    ("imagenet2012", 0): "tench",  # n01440764
    ("imagenet2012", 281): "tabby cat",  # n02123045
    ("imagenet2012", 999): "toilet paper",  # n15075141
    ("svhn_cropped", 0): "zero",
}
_STOP = {"a", "an", "and", "of", "or", "the"}


def _words(name: str) -> set[str]:
    name = re.sub(r"([a-z])([A-Z])", r"\1 \2", re.sub(r"^/[a-z]/", "", name)).lower()
    return {w[:-1] if len(w) > 3 and w.endswith("s") else w for w in re.findall(r"[a-z0-9]+", name)} - _STOP


def _same_class(dataset: str, tfds_label: str, name: str) -> bool:
    if SAME_CLASS.get((dataset, tfds_label)) == name:
        return True
    a, b = _words(tfds_label), _words(name)
    return bool(a and b) and (a <= b or b <= a)


@pytest.fixture(scope="module")
def tfds_labels(tmp_path_factory):
    """TFDS dataset name -> its ClassLabel feature, from builders in an empty data dir."""
    import tensorflow_datasets as tfds

    empty = str(tmp_path_factory.mktemp("no_data"))
    return {
        name: tfds.builder(name, data_dir=empty, try_gcs=False).info.features["label"]
        for name in benchmarks.list_benchmarks()
    }


def test_the_common_zero_shot_sets_are_shipped():
    assert {
        "cifar10", "cifar100", "food101", "oxford_iiit_pet", "oxford_flowers102", "stl10", "sun397", "caltech101",
        "dtd", "eurosat", "mnist", "imagenet2012", "imagenet_v2", "imagenet_r", "imagenet_a", "imagenet_sketch",
        "svhn_cropped", "cars196", "resisc45", "patch_camelyon",
    } <= set(benchmarks.list_benchmarks())


@pytest.mark.parametrize("name", benchmarks.list_benchmarks())
def test_class_names_are_in_tfds_label_order(name, tfds_labels):
    bench = benchmarks.benchmark(name)
    label = tfds_labels[name]
    assert len(bench.classnames) == label.num_classes
    repeated = {c for c in bench.classnames if bench.classnames.count(c) > 1}
    # OpenAI's ImageNet names repeat two: missile (657, 744) and sunglasses (836, 837), kept as published
    imagenet = bench.classnames == benchmarks.benchmark("imagenet2012").classnames
    assert repeated == ({"missile", "sunglasses"} if imagenet else set())
    assert bench.templates and all(t.count("{}") == 1 for t in bench.templates)
    names = label.names
    if names[0].startswith("n0"):  # WordNet ids: the ImageNet variants label like imagenet2012
        assert names == tfds_labels["imagenet2012"].names
        assert bench.classnames == benchmarks.benchmark("imagenet2012").classnames
        assert bench.templates == OPENAI_IMAGENET_TEMPLATES
    elif not names[0].isdigit():  # readable TFDS names (others are named only once the data is prepared)
        wrong = [(i, t, c) for i, (t, c) in enumerate(zip(names, bench.classnames)) if not _same_class(name, t, c)]
        assert not wrong


@pytest.mark.parametrize("place,name", sorted(ORDER_TRAPS.items()))
def test_labels_where_other_lists_are_ordered_differently(place, name):
    dataset, label = place
    assert benchmarks.benchmark(dataset).classnames[label] == name


def test_cifar100_names_follow_its_sorted_label_file():
    names = [n.replace(" ", "_") for n in benchmarks.benchmark("cifar100").classnames]
    assert names == sorted(names)  # fine_label_names.txt, which TFDS reads at build time, is alphabetical


@pytest.mark.parametrize(
    "source,name",
    [
        ("cifar10", "cifar10"),
        ("tfds:cifar10:test", "cifar10"),
        ("tfds:cifar10:3.0.2:test", "cifar10"),
        ("tfds:eurosat/rgb:train[:80%]", "eurosat"),
        ("tfds:imagenet_v2/matched-frequency:test#data_dir=/data/tfds", "imagenet_v2"),
        ("tfds:oxford_iiit_pet", "oxford_iiit_pet"),
    ],
)
def test_lookup_by_source_string(source, name):
    bench = benchmarks.benchmark(source)
    assert bench.name == name
    assert bench == benchmarks.benchmark(name)


def test_unknown_datasets_are_named_with_the_known_ones():
    with pytest.raises(benchmarks.UnknownBenchmarkError, match=r"dataset 'my_set'; known TFDS datasets: caltech101, "):
        benchmarks.benchmark("tfds:my_set:test")
    with pytest.raises(LookupError, match="csv:/d/x.csv"):
        benchmarks.benchmark("csv:/d/x.csv")
    assert benchmarks.find_benchmark("shapes:val#n=10") is None
    assert benchmarks.find_benchmark("tfds:coco_captions:test") is None


def test_the_data_file_is_package_data():
    setup = open(os.path.join(REPO, "setup.py")).read()
    assert re.search(r'"clip_jax\.evaluation": \[[^]]*"benchmark_data\.json"', setup)
    assert os.path.dirname(benchmarks.DATA_FILE) == os.path.join(REPO, "clip_jax", "evaluation")


# --- in-loop evals on TFDS sources ---------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_cifar10(tmp_path_factory):
    """A TFDS data dir with a prepared `cifar10` test split of 20 random images (labels 0..9, twice)."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    features = tfds.builder("cifar10", data_dir=data_dir, try_gcs=False).info.features
    rng = np.random.default_rng(0)
    examples = {
        "id": [f"test_{i}" for i in range(20)],
        "image": rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
        "label": np.arange(20) % 10,
    }
    tfds.dataset_builders.store_as_tfds_dataset(
        name="cifar10", version=str(tfds.builder("cifar10", data_dir=data_dir).version), data_dir=data_dir,
        split_datasets={"test": tf.data.Dataset.from_tensor_slices(examples)}, features=features,
    )
    return data_dir


@pytest.fixture(scope="module")
def in_loop_setup():
    """(config, encoders, variables) for a random 1 + 1 layer CLIP on 32 px images over the 8 CPU devices."""
    import jax
    import jax.numpy as jnp
    import ml_collections

    from clip_jax import create_model
    from clip_jax.evaluation import in_loop
    from clip_jax.runtime import sharding

    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    model = create_model(
        "ViT-Tiny-8", dtype="float32", embed_dim=32, vision=dict(width=64, layers=1, head_width=32),
        text=dict(width=64, heads=2, layers=1, context_length=24),
    )
    init = jax.jit(model.init, out_shardings=sharding.replicated(mesh))
    variables = init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 24), jnp.int32))
    config = ml_collections.ConfigDict({"data": {"tokenizer": "clip", "context_length": 24}})
    return config, in_loop.make_encoders(model, sharding.batch_sharding(mesh)), variables


def _tasks(**specs):
    import ml_collections

    from clip_jax.evaluation import in_loop

    return [
        in_loop.EvalTask(name, ml_collections.ConfigDict(dict(spec, batch_size=8, every_steps=1)))
        for name, spec in specs.items()
    ]


def test_zeroshot_eval_without_class_names_uses_the_shipped_ones(fake_cifar10, in_loop_setup, monkeypatch):
    from clip_jax.config import default_config
    from clip_jax.config.validation import validate
    from clip_jax.evaluation import in_loop

    config, encoders, variables = in_loop_setup
    source = f"tfds:cifar10:test#data_dir={fake_cifar10}"
    full = default_config()
    full.evals = {"cifar": {"type": "zeroshot", "data": source, "every_steps": 10}}
    validate(full)  # no classnames needed for a source with shipped metadata

    seen = []
    real_run_eval = in_loop.run_eval

    def spy(eval_type, **kwargs):
        seen.append((kwargs["classnames"], kwargs["templates"]))
        return real_run_eval(eval_type, **kwargs)

    monkeypatch.setattr(in_loop, "run_eval", spy)
    mine = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "lorry"]
    tasks = _tasks(
        shipped=dict(type="zeroshot", data=source),
        explicit=dict(type="zeroshot", data=source, classnames=mine),
        both=dict(type="zeroshot", data=source, classnames=mine, templates=["{}"]),
        same_as_shipped=dict(
            type="zeroshot", data=source, classnames=list(benchmarks.benchmark("cifar10").classnames),
            templates=list(benchmarks.benchmark("cifar10").templates),
        ),
    )
    metrics = in_loop.run_evals(tasks, 1, config, 32, variables, encoders)
    cifar10 = benchmarks.benchmark("cifar10")
    assert seen[0] == (cifar10.classnames, cifar10.templates)
    assert seen[0][0][0] == "airplane" and len(seen[0][1]) == 18
    assert seen[1] == (mine, cifar10.templates)  # given class names win, templates still the set's own
    assert seen[2] == (mine, ["{}"])
    for metric in ("top1", "top5", "mean_per_class_recall"):
        assert metrics[f"shipped/{metric}"] == metrics[f"same_as_shipped/{metric}"]
        assert 0 <= metrics[f"shipped/{metric}"] <= 1
    assert metrics["shipped/top5"] >= metrics["shipped/top1"]


def test_a_dataset_that_is_not_prepared_is_named_with_how_to_prepare_it(tmp_path):
    from clip_jax import data

    def error(source):
        with pytest.raises(data.DatasetNotFoundError) as raised:
            data.Pipeline(source, training=False, batch_size=4, image_size=32, labels=True, text=False,
                          process_index=0, process_count=1)
        return str(raised.value)

    empty = str(tmp_path)
    message = error(f"tfds:cifar10:test#data_dir={empty}")
    assert "\n" not in message
    assert f"TFDS dataset 'cifar10' is not prepared in '{empty}'" in message
    assert f"`tfds build cifar10 --data_dir={empty}`" in message and "download_and_prepare()" in message
    message = error(f"tfds:imagenet2012:validation#data_dir={empty}")
    assert "\n" not in message and "'imagenet2012'" in message
    assert f"manual_dir {empty}/downloads/manual/" in message and "ILSVRC2012_img_val.tar" in message
    assert f"`tfds build imagenet2012 --data_dir={empty}`" in message
    assert "'eurosat/rgb'" in error(f"tfds:eurosat/rgb:train#data_dir={empty}")
    assert os.listdir(empty) == []  # nothing downloaded or written
    assert issubclass(data.DatasetNotFoundError, FileNotFoundError)


def test_optional_eval_without_its_dataset_is_skipped_with_one_warning(
    fake_cifar10, in_loop_setup, tmp_path, caplog
):
    from clip_jax.evaluation import in_loop

    config, encoders, variables = in_loop_setup
    missing = f"tfds:imagenet2012:validation#data_dir={tmp_path}"
    tasks = _tasks(
        imagenet=dict(type="zeroshot", data=missing, optional=True),
        cifar=dict(type="zeroshot", data=f"tfds:cifar10:test#data_dir={fake_cifar10}"),
    )
    with caplog.at_level(logging.WARNING, logger="clip_jax.evaluation"):
        first = in_loop.run_evals(tasks, 1, config, 32, variables, encoders)
        second = in_loop.run_evals(tasks, 2, config, 32, variables, encoders, force=True)
    assert sorted(first) == sorted(second) == ["cifar/mean_per_class_recall", "cifar/top1", "cifar/top5"]
    ours = [r for r in caplog.records if r.name.startswith("clip_jax")]  # TFDS adds a warning of its own
    warnings = [r.getMessage() for r in ours if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith("optional eval imagenet skipped") and "'imagenet2012'" in warnings[0]
    assert tasks[0].skipped and not tasks[1].skipped

    required = _tasks(imagenet=dict(type="zeroshot", data=missing))
    with pytest.raises(FileNotFoundError, match="TFDS dataset 'imagenet2012' is not prepared"):
        in_loop.run_evals(required, 1, config, 32, variables, encoders)


def test_full_size_recipes_log_imagenet_zero_shot_when_it_is_there():
    import glob
    import runpy

    from clip_jax.config.validation import validate

    recipes = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))
    with_imagenet, full_size = [], []
    for path in recipes:
        config = runpy.run_path(path)["get_config"]()
        if not str(config.data.train).startswith("shapes"):  # the CPU demos train on the built-in data
            full_size.append(os.path.basename(path))
        if "imagenet" in config.evals:
            spec = config.evals.imagenet
            assert (spec.type, spec.data, spec.optional) == ("zeroshot", "tfds:imagenet2012:validation", True)
            assert "classnames" not in spec and 0 < spec.every_steps <= config.total_steps
            validate(config)
            with_imagenet.append(os.path.basename(path))
    assert len(full_size) >= 9 and set(with_imagenet) == set(full_size)
