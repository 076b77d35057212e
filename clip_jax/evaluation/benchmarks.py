"""Class names and prompt templates of common zero-shot sets, looked up by TFDS dataset name.

    from clip_jax.evaluation import benchmark, list_benchmarks
    bench = benchmark("tfds:cifar10:test")      # or "cifar10", "tfds:eurosat/rgb:train[:80%]"
    bench.classnames[i]                         # the name of label i of the TFDS dataset
    bench.templates                             # prompts with one "{}"

Label i of `tfds:NAME:SPLIT` is `classnames[i]`: every list is in TFDS's
label order, which is not always torchvision's or OpenAI's (oxford_iiit_pet,
food101, sun397, eurosat, caltech101 differ). A config name ("eurosat/rgb"),
version ("cifar10:3.0.2"), split and `#` options are ignored. The ImageNet
variants (imagenet_v2, imagenet_r, imagenet_a, imagenet_sketch) share
imagenet2012's 1,000 labels and names; TFDS labels imagenet_r and imagenet_a
in that 1,000-class space, so their scores here are 1,000-way, below the
200-way numbers usually published.

Provenance (MIT licence): class names and templates from CLIP_benchmark 1.6.2
(LAION-AI/CLIP_benchmark, en_classnames.json and
en_zeroshot_classification_templates.json), class names of cifar10,
cifar100 and stl10 from OpenAI CLIP's data/prompts.md; food101, sun397, dtd,
cars196 and resisc45 use TFDS's own label names made readable ("_" and "/"
as spaces), the same names as OpenAI's lists. ImageNet's templates are
OpenAI's 80 (templates.OPENAI_IMAGENET_TEMPLATES). The data is
benchmark_data.json next to this file, written by make_benchmark_data.py;
each entry's "source" says where its lists come from.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os

from clip_jax.evaluation.templates import get_templates

DATA_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "benchmark_data.json")


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """A zero-shot set: `name` (its TFDS name), classnames[i] for label i, templates with one "{}"."""

    name: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]


class UnknownBenchmarkError(LookupError):
    """No shipped class names for a dataset; the message names it and lists the known ones."""


@functools.cache
def _entries() -> dict[str, dict]:
    with open(DATA_FILE, encoding="utf-8") as f:
        return json.load(f)["datasets"]


def list_benchmarks() -> list[str]:
    """The TFDS dataset names with shipped class names and templates, sorted."""
    return sorted(_entries())


def dataset_name(name_or_source: str) -> str | None:
    """The TFDS dataset name of a name or `tfds:` source string; None for other kinds of source.

    "tfds:eurosat/rgb:train[:80%]#data_dir=/d" -> "eurosat/rgb"; "cifar10:3.0.2" -> "cifar10".
    """
    body = name_or_source.partition("#")[0].strip()
    kind, colon, rest = body.partition(":")
    if kind in ("wds", "tfrecord", "csv", "shapes"):
        return None
    if kind == "tfds" and colon:
        body = rest
    return body.split(":")[0] or None


def find_benchmark(name_or_source: str) -> Benchmark | None:
    """The shipped metadata of a dataset name or source string, or None where there is none."""
    name = dataset_name(name_or_source)
    if name is None:
        return None
    entries = _entries()
    for key in (name, name.split("/")[0]):  # "eurosat/rgb": the config's own entry, else the dataset's
        if key in entries:
            entry = entries[key]
            base = entries[entry["same_as"]] if "same_as" in entry else entry
            return Benchmark(key, tuple(base["classnames"]), get_templates(base["templates"]))
    return None


def benchmark(name_or_source: str) -> Benchmark:
    """The class names and templates of a TFDS dataset, by name or source string.

    Raises UnknownBenchmarkError naming the dataset and listing the known ones.
    """
    found = find_benchmark(name_or_source)
    if found is None:
        name = dataset_name(name_or_source)
        what = f"dataset {name!r}" if name else f"source {name_or_source!r} (not a tfds: source)"
        raise UnknownBenchmarkError(
            f"no shipped class names for {what}; known TFDS datasets: {', '.join(list_benchmarks())}. "
            "Give classnames (and templates) explicitly."
        )
    return found
