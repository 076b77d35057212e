r"""Evaluates a model on standard or own data sets from the command line, sharded over every device.

    python -m clip_jax.evaluate --model runs/vit_b32 \
        --dataset tfds:imagenet2012:validation --dataset tfds:cifar10:test
    python -m clip_jax.evaluate --model runs/vit_b32 --task retrieval --dataset csv:/data/coco_val.csv
    python -m clip_jax.evaluate --model runs/vit_b32 --config configs/vit_b32.py   # the config's evals
    python -m clip_jax.evaluate --model ViT-B-32.pt --model_name ViT-B-32-quickgelu --dataset tfds:cifar10:test

--model is a training run's workdir (its newest checkpoint), a weights
directory (clip_jax.import_weights), a transformers CLIPModel / SiglipModel
directory, a big_vision SigLIP .npz (with --tokenizer: it holds none) or a
PyTorch checkpoint file with --model_name. Zero-shot sets with shipped metadata (clip_jax.evaluation.benchmarks,
keyed by TFDS name) need no class names. Every process of a multi-process job
runs this with the same flags (plus --coordinator_address etc. where JAX
cannot detect the cluster); each decodes its share of every set, and all get
the metrics of the whole set, equal to a one-process run's.

Prints a table and writes --output: a JSON list of records in
CLIP_benchmark's format and metric names (`acc1`, `acc5`,
`mean_per_class_recall`; `image_retrieval_recall@k`, `text_retrieval_recall@k`;
`lp_acc1`). A data set that is not there ends the run with one line naming it
and how to prepare it. On Linux it first restarts itself once with glibc's
huge-page malloc, as clip_jax.main does (`clip_jax.runtime.host_memory`).
"""
from __future__ import annotations

from clip_jax.runtime import host_memory

if __name__ == "__main__":  # first: what is imported below would be imported again after the restart
    host_memory.reexec_with_huge_pages()

import json
import logging
import os
import sys
import time
from typing import Any

import jax
import ml_collections
from absl import app, flags
from etils import epath
from ml_collections import config_flags

from clip_jax.config import ConfigError, default_config
from clip_jax.config.validation import validate
from clip_jax.evaluation.report import clip_benchmark_record, format_table
from clip_jax.inference.pretrained import default_dtype, load_weights
from clip_jax.models import CLIP
from clip_jax.runtime import multihost, paths, sharding
from clip_jax.runtime.cli import initialize_distributed, setup_logging

_MODEL = flags.DEFINE_string(
    "model", None, "Run workdir, weights directory, transformers model directory, big_vision .npz or PyTorch file."
)
_MODEL_NAME = flags.DEFINE_string("model_name", None, "clip_jax model name of a PyTorch checkpoint file.")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Tokenizer spec (default: the one the weights name, else 'clip').")
_DATASETS = flags.DEFINE_multi_string("dataset", [], "Data source string (tfds:NAME:SPLIT, csv:PATH, ...); repeatable.")
_TASK = flags.DEFINE_enum("task", "zeroshot", ["zeroshot", "retrieval", "linear_probe"], "Eval type of every --dataset.")
_CLASSNAMES = flags.DEFINE_string("classnames", None, "Zero-shot: a text file with one class name per line.")
_TEMPLATES = flags.DEFINE_string("templates", None, "Zero-shot: a template set name (default: the data set's own).")
_TRAIN = flags.DEFINE_string("train_dataset", None, "Linear probe: the source to fit on.")
_VAL = flags.DEFINE_string("val_dataset", None, "Linear probe: the source that chooses the L2 strength.")
_CAPTIONS = flags.DEFINE_integer("num_captions", 1, "Retrieval: captions per image in the source.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Images encoded at once over all devices.")
_OUTPUT = flags.DEFINE_string("output", "eval_results.json", "JSON file for the results (local or gs://).")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Config whose `evals` (and data.tokenizer) to use.")
flags.mark_flags_as_required(["model"])

log = logging.getLogger("clip_jax.evaluate")


def dataset_name(source: str) -> str:
    """A short name for a source string: "tfds:cifar10:test" -> "cifar10", "csv:/d/coco_val.csv" -> "coco_val"."""
    kind, _, rest = source.partition(":")
    if kind == "tfds":
        return rest.split(":")[0]
    return os.path.splitext(os.path.basename(rest.rstrip("/")))[0] or source


def eval_specs(datasets: list[str], task: str, options: dict[str, Any]) -> ml_collections.ConfigDict:
    """config.evals for the --dataset flags: name -> {type, data, every_steps=1, and the given options}."""
    evals = ml_collections.ConfigDict()
    for source in datasets:
        name = dataset_name(source)
        if name in evals:
            raise ValueError(f"--dataset {source!r}: another --dataset is also named {name!r}")
        evals[name] = {"type": task, "data": source, "every_steps": 1, **{k: v for k, v in options.items() if v}}
    return evals


def eval_config(tokenizer: str, context_length: int, evals: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The default config with the model's tokenizer and these evals, validated (errors name the field)."""
    config = default_config()
    config.data.tokenizer = tokenizer
    config.data.context_length = context_length
    config.evals = evals
    validate(config)
    return config


def evaluate(
    model: CLIP, variables: dict[str, Any], config: ml_collections.ConfigDict, *, model_name: str, pretrained: str
) -> list[dict[str, Any]]:
    """Runs config.evals over all devices; one CLIP_benchmark record per eval, on every process.

    variables: host arrays, replicated onto every device. model_name and
    pretrained are the records' "model" and "pretrained" fields.
    """
    from clip_jax.evaluation.in_loop import EvalTask, make_encoders  # imports TensorFlow

    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    variables = jax.device_put(variables, sharding.replicated(mesh))
    encoders = make_encoders(model, sharding.batch_sharding(mesh))
    records = []
    for name, spec in config.evals.items():
        start = time.perf_counter()
        metrics = EvalTask(name, spec).evaluate(config, model.visual.image_size, variables, encoders, progress=True)
        log.info("%s: %s (%.1f s)", name, metrics, time.perf_counter() - start)
        records.append(clip_benchmark_record(name, spec.type, metrics, model_name, pretrained))
    return records


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    setup_logging()
    initialize_distributed()
    if bool(_DATASETS.value) == bool(_CONFIG.value):
        raise app.UsageError("give --dataset (one or more) or --config, not both")
    options = {
        "classnames": _read_lines(_CLASSNAMES.value) if _CLASSNAMES.value else None,
        "templates": _TEMPLATES.value,
        "train_data": _TRAIN.value,
        "val_data": _VAL.value,
        "num_captions": _CAPTIONS.value if _CAPTIONS.value > 1 else None,
        "batch_size": _BATCH.value,
    }
    try:
        evals = _CONFIG.value.evals if _CONFIG.value else eval_specs(_DATASETS.value, _TASK.value, options)
        tokenizer = _TOKENIZER.value or (_CONFIG.value.data.tokenizer if _CONFIG.value else None)
        records = multihost.exit_on_failure(lambda: _run(evals, tokenizer))
    except (ConfigError, ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    if jax.process_index() == 0:
        print(format_table(records))
        output = paths.resolve(_OUTPUT.value)
        output.write_text(json.dumps(records, indent=2) + "\n")
        print(f"wrote {output}")


def _run(evals: ml_collections.ConfigDict, tokenizer: str | None) -> list[dict[str, Any]]:
    model, variables, metadata = load_weights(_MODEL.value, model=_MODEL_NAME.value, dtype=default_dtype())
    spec = tokenizer or metadata.get("tokenizer", "clip")
    if spec is None:
        raise ValueError(f"{_MODEL.value} comes without a tokenizer (a big_vision .npz has none): pass --tokenizer")
    config = eval_config(spec, model.text.context_length, evals)
    return evaluate(model, variables, config, model_name=metadata["model"], pretrained=_MODEL.value)


def _read_lines(path: str) -> list[str]:
    """Non-empty lines of a text file (local or gs://)."""
    return [line.strip() for line in epath.Path(path).read_text().splitlines() if line.strip()]


if __name__ == "__main__":
    app.run(main)
