"""`python -m clip_jax.evaluate` end to end on a tiny trained model and a `csv:` set.

The model is the session's trained run (conftest.trained_run: ViT-Tiny-8 with one block per tower,
40 steps on `shapes`); a module fixture writes a CSV of 45 fresh labelled shape images (the `val`
split: combinations seen in training) with their captions.
The CLI then runs on 8 simulated devices in one process and, as a 2 x 4 cluster (gloo on loopback),
in two: both must write the same records, and those must equal CLIP_benchmark's
metric definitions (tests/test_clip_benchmark_metrics.py) computed here from
the model's embeddings of the pipeline's images on one device.
"""
import csv as csv_module
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import clip_jax
from clip_jax import data
from clip_jax.data import shapes
from runs import REPO, TIMEOUT_S, start_cluster, wait_cluster
from test_clip_benchmark_metrics import clip_benchmark_retrieval, clip_benchmark_zeroshot

NUM_IMAGES = 45  # not a multiple of the batch (16) or of the devices: padded, uneven shares
CLASSNAMES = shapes.classnames("shape")
EVAL_CONFIG = """
import ml_collections
from clip_jax.config import default_config as default


def get_config():
    config = default()
    config.evals = ml_collections.ConfigDict({{
        "shapes_csv": dict(type="zeroshot", data="csv:{csv}", classnames={classnames}, templates="simple",
                           batch_size=16, every_steps=1),
        "shapes_csv_retrieval": dict(type="retrieval", data="csv:{csv}", batch_size=16, every_steps=1),
    }})
    return config
"""


def _run(command, env=None, timeout=TIMEOUT_S):
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def setup(trained_run, tmp_path_factory):
    """(run workdir, csv path, eval config path)."""
    root = tmp_path_factory.mktemp("evaluate_cli")
    images = root / "images"
    images.mkdir()
    spec = shapes.ShapesConfig(split="val", n=NUM_IMAGES, size=32)
    csv = root / "shapes.csv"
    with open(csv, "w", newline="") as f:
        writer = csv_module.writer(f)
        writer.writerow(["filepath", "caption", "label"])
        for i in range(NUM_IMAGES):
            example = shapes.example(spec, i)
            (images / f"{i}.png").write_bytes(example.image)
            writer.writerow([f"images/{i}.png", example.captions[0], example.label])
    eval_config = root / "eval_config.py"
    eval_config.write_text(EVAL_CONFIG.format(csv=csv, classnames=CLASSNAMES))
    return trained_run.workdir, str(csv), str(eval_config)


def _cli(*flags, processes=1, tmp_path):
    """Runs the CLI (as `processes` processes sharing 8 devices); the records it wrote."""
    output = tmp_path / f"results_{processes}.json"
    command = [sys.executable, "-m", "clip_jax.evaluate", f"--output={output}", *flags]
    if processes == 1:
        result = _run(command)
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(output.read_text()), result
    processes_started = start_cluster([*command, "--heartbeat_timeout_seconds=30"], processes, str(tmp_path))
    codes, logs = wait_cluster(processes_started, str(tmp_path))
    assert codes == [0] * processes, [log[-3000:] for log in logs]
    return json.loads(output.read_text()), logs[0]


def _reference_embeddings(workdir, csv):
    """The trained model's embeddings of the csv set on one device: images [N, E] and captions [N, E], labels [N]."""
    model, variables, _ = clip_jax.load(workdir)
    pipeline = data.Pipeline(
        f"csv:{csv}", training=False, batch_size=NUM_IMAGES, image_size=32, tokenizer="clip", context_length=24,
        labels=True, text=True,
    )
    (batch,) = list(pipeline.iterator())
    device = jax.devices()[0]
    variables = jax.device_put(variables, device)
    encode = jax.jit(lambda v, x, method: model.apply(v, x, method=method), static_argnums=2)
    images = np.asarray(encode(variables, jax.device_put(batch["images"], device), model.encode_image))
    texts = np.asarray(encode(variables, jax.device_put(batch["tokens"], device), model.encode_text))
    prompts = clip_jax.tokenizers.ClipTokenizer(24)([f"a photo of a {c}." for c in CLASSNAMES])
    classes = np.asarray(encode(variables, jax.device_put(prompts, device), model.encode_text))
    return images, texts, classes, batch["labels"]


def test_cli_matches_clip_benchmark_definitions_on_one_and_two_processes(setup, tmp_path):
    workdir, csv, eval_config = setup
    classnames_file = tmp_path / "classes.txt"
    classnames_file.write_text("\n".join(CLASSNAMES) + "\n")
    flags_run, result = _cli(
        f"--model={workdir}", f"--dataset=csv:{csv}", f"--classnames={classnames_file}", "--templates=simple",
        "--batch_size=16", tmp_path=tmp_path,
    )
    assert "shapes: 45/45 images" in result.stderr  # the progress line's last state
    assert "acc1" in result.stdout and "wrote" in result.stdout  # the table
    (zeroshot,) = flags_run
    assert zeroshot["dataset"] == "shapes" and zeroshot["task"] == "zeroshot_classification"
    assert zeroshot["model"] == "ViT-Tiny-8" and zeroshot["pretrained"] == workdir
    config_run, _ = _cli(f"--model={workdir}", f"--config={eval_config}", processes=2, tmp_path=tmp_path)
    by_name = {record["dataset"]: record for record in config_run}
    assert by_name["shapes_csv"]["metrics"] == zeroshot["metrics"]  # bit-identical embeddings: same metrics

    images, texts, classes, labels = _reference_embeddings(workdir, csv)
    # The CLI encodes in other batch shapes on other devices: float32 rounding may reorder only the
    # near ties, so each metric may differ by at most the share of queries that have one.
    expected, ties = clip_benchmark_zeroshot(images, classes, labels)
    assert zeroshot["metrics"].keys() == expected.keys()
    assert all(abs(zeroshot["metrics"][k] - v) <= ties + 1e-12 for k, v in expected.items()), (zeroshot, expected)
    expected, ties = clip_benchmark_retrieval(images, texts, np.arange(NUM_IMAGES))
    retrieval = by_name["shapes_csv_retrieval"]["metrics"]
    assert retrieval.keys() == expected.keys()
    assert all(abs(retrieval[k] - v) <= ties + 1e-12 for k, v in expected.items()), (retrieval, expected)
    assert expected["image_retrieval_recall@5"] > 5 / NUM_IMAGES  # trained: better than chance


def test_cli_names_a_missing_dataset_in_one_line(setup, tmp_path):
    workdir, _, _ = setup
    env = {**os.environ, "TFDS_DATA_DIR": str(tmp_path / "no_datasets")}
    result = _run(
        [sys.executable, "-m", "clip_jax.evaluate", f"--model={workdir}", "--dataset=tfds:cifar10:test"], env=env
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "cifar10" in last and "tfds build" in last, last
    result = _run([sys.executable, "-m", "clip_jax.evaluate", f"--model={workdir}", f"--dataset=csv:{tmp_path}/no.csv"])
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode != 0 and last.startswith("error: ") and "no.csv" in last, last
