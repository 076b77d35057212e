"""gs:// everywhere: a run whose workdir, data, eval data and init weights are in a bucket, and its resume.

The bucket is served by a GCS emulator on loopback that TensorFlow's and
tensorstore's own GCS clients talk to (see gcs_emulator.py); nothing of ours
is mocked.
"""
from __future__ import annotations

import json
import os
import runpy

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
import pytest
import tensorflow as tf
from etils import epath
from gcs_emulator import gcs_emulator
from test_data_util import write_csv, write_image_files, write_tfds, write_wds

from clip_jax.import_weights import import_weights
from clip_jax.training.objectives import model_from_config
from clip_jax.tokenizers import SentencePieceTokenizer, get_tokenizer, train_sentencepiece
from clip_jax.weights import storage as weights
from runs import REPO, TEST_CONFIG, run_main

BUCKET = "gs://clip-jax-test"

CONFIG = TEST_CONFIG.replace("    return config", f'''
    config.total_steps = 10
    config.optimizer.warmup_steps = 2
    config.data.train = "wds:{BUCKET}/wds/*.tar"
    config.evals = ml_collections.ConfigDict({{
        "toy": dict(type="zeroshot", data="tfds:toy_captions:test#data_dir={BUCKET}/tfds",
                    classnames=["zero", "one", "two"], templates=["a photo of {{}}."], every_steps=10),
        "csv": dict(type="retrieval", data="csv:{BUCKET}/csv/data.csv", every_steps=10),
    }})
    return config''')


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """The emulator, with this process's GCS clients pointed at it; stopped after the module."""
    with gcs_emulator(BUCKET[len("gs://"):], str(tmp_path_factory.mktemp("gcs"))) as env:
        with pytest.MonkeyPatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            yield env


def upload(local_dir: str, remote_dir: str) -> None:
    for root, _, files in os.walk(local_dir):
        for name in files:
            relative = os.path.relpath(os.path.join(root, name), local_dir)
            target = f"{remote_dir}/{relative}"
            tf.io.gfile.makedirs(os.path.dirname(target))
            tf.io.gfile.copy(os.path.join(root, name), target, overwrite=True)


def test_run_in_a_bucket_resumes_from_the_bucket(gcs, tmp_path):
    local = tmp_path / "local"
    write_wds(str(local / "wds"), shards=2, per_shard=12)
    write_csv(str(local / "csv"), write_image_files(str(local / "csv"), 12, start=100))  # relative image paths
    write_tfds(str(local / "tfds"))
    upload(str(local), BUCKET)
    config_file = tmp_path / "config.py"
    config_file.write_text(CONFIG)
    config = runpy.run_path(str(config_file))["get_config"]()
    model, overrides = model_from_config(config)
    size, length = model.visual.image_size, config.data.context_length
    init = nn.unbox(model.init(jax.random.key(1), jnp.zeros((1, size, size, 3)), jnp.zeros((1, length), jnp.int32)))
    weights.save_variables(f"{BUCKET}/init", init, {"model": config.model, "overrides": overrides})
    workdir, cwd = f"{BUCKET}/run", tmp_path / "cwd"
    cwd.mkdir()

    first = run_main(str(config_file), workdir, "--config.total_steps=5", f"--config.init_from={BUCKET}/init", cwd=cwd).stderr
    second = run_main(str(config_file), workdir, cwd=cwd).stderr

    assert f"initialised parameters from {BUCKET}/init" in first
    assert f"resumed from step 5 in {workdir}/checkpoints" in second
    run = epath.Path(workdir)
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == [5, 10]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [5, 10]  # one file, appended to by both runs
    assert [r["step"] for r in records if "toy/top1" in r and "csv/i2t_R@1" in r] == [5, 10]  # evals end each run
    assert len([p for p in run.iterdir() if p.name.startswith("events.out.tfevents")]) == 2
    variables, metadata = weights.load_variables(run / "checkpoints")
    assert metadata["model"] == "ViT-Tiny-8"
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(variables))
    assert os.listdir(cwd) == []  # no local `gs:` directory


def test_sentencepiece_model_trains_into_and_loads_from_bucket(gcs, tmp_path):
    words = "red green blue small large circle square triangle photo of a the on".split()
    rng = np.random.default_rng(0)
    captions = "\n".join(" ".join(rng.choice(words, 6)) for _ in range(300))
    epath.Path(f"{BUCKET}/spm/captions.txt").write_text(captions)
    model_file = train_sentencepiece(f"{BUCKET}/spm/captions.txt", f"{BUCKET}/spm/out/spm", vocab_size=30)
    assert model_file == f"{BUCKET}/spm/out/spm.model" and epath.Path(f"{BUCKET}/spm/out/spm.vocab").is_file()
    local_copy = str(epath.Path(model_file).copy(tmp_path / "spm.model"))
    texts = ["a small red circle", "the photo of a large blue square"]
    tokens = get_tokenizer(f"sentencepiece:{model_file}", 16)(texts)
    np.testing.assert_array_equal(tokens, SentencePieceTokenizer(local_copy, 16)(texts))
    assert tokens.max() < 30 and (tokens[:, 0] > 0).all()


def test_imported_weights_load_from_bucket(gcs, tmp_path):
    with np.load(os.path.join(REPO, "tests", "fixtures", "vit_small.npz")) as data:
        arrays = dict(data)
    ref = {k[2:]: arrays.pop(k) for k in list(arrays) if k.startswith("__")}
    spec = json.loads(str(ref.pop("model")))
    np.savez(tmp_path / "weights.npz", **arrays)
    tf.io.gfile.copy(str(tmp_path / "weights.npz"), f"{BUCKET}/weights/vit_small.npz", overwrite=True)

    import_weights(f"{BUCKET}/weights/vit_small.npz", spec["name"], f"{BUCKET}/weights/imported", spec["overrides"])
    model, variables = weights.load_model(f"{BUCKET}/weights/imported")

    image_embeds = model.apply(variables, ref["images"], method=model.encode_image)
    np.testing.assert_allclose(image_embeds, ref["image_embeds"], atol=1e-5)
