"""Data source strings: parsing, mixtures, and listing the files a glob names.

    tfds:NAME[:SPLIT]      e.g. tfds:cifar10:test, tfds:coco_captions/2017:1.1.0:val
    wds:GLOB               webdataset tar shards, e.g. wds:/data/{00000..00099}.tar
    tfrecord:GLOB          TFRecord files of tf.train.Example, e.g. tfrecord:gs://b/*.tfrecord
    csv:PATH               a CSV of image paths and captions (and labels)
    shapes[:SPLIT]         the generated data set (split train | val | eval)

Any source can end in `#key=value&key=value` options that override the
pipeline-wide defaults for that source only: image_key, caption_key,
label_key (each may list alternatives, "jpg;png"), and per kind: csv
`delimiter` (a character or "tab"), tfds `data_dir`, shapes `n`, `size`,
`label` (shape | color | combo) and `data_seed`.
"""
from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Sequence
from typing import BinaryIO

import tensorflow as tf

from clip_jax.runtime import paths

KINDS = ("tfds", "wds", "tfrecord", "csv", "shapes")
_COMMON_OPTIONS = {"image_key", "caption_key", "label_key"}
_KIND_OPTIONS = {
    "tfds": {"data_dir"},
    "wds": set(),
    "tfrecord": set(),
    "csv": {"delimiter"},
    "shapes": {"n", "size", "label", "data_seed"},
}
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """A parsed source string.

    kind: one of KINDS. target: the glob, path or TFDS name ("" for shapes).
    split: the TFDS or shapes split, None where it does not apply or was not given.
    options: the `#` options. text: the source string as written (used in messages).
    """

    kind: str
    target: str
    split: str | None
    options: dict[str, str]
    text: str


def parse_source(text: str) -> SourceSpec:
    """Parses one source string; raises ValueError naming the string when malformed."""
    body, _, opt_text = text.partition("#")
    kind, _, rest = body.partition(":")
    if kind not in KINDS:
        raise ValueError(f"data source {text!r}: unknown kind {kind!r}, expected one of {', '.join(KINDS)}")
    options: dict[str, str] = {}
    for pair in filter(None, opt_text.split("&")):
        key, eq, value = pair.partition("=")
        if not eq or key not in _COMMON_OPTIONS | _KIND_OPTIONS[kind]:
            allowed = sorted(_COMMON_OPTIONS | _KIND_OPTIONS[kind])
            raise ValueError(f"data source {text!r}: bad option {pair!r}; options for {kind}: {allowed}")
        options[key] = value
    split = None
    if kind == "tfds":
        parts = rest.split(":")
        if parts[1:] and _VERSION.match(parts[1]):
            parts = [parts[0] + ":" + parts[1], *parts[2:]]
        split = ":".join(parts[1:]) or None  # a slice may hold colons: "train[45000:]"
        if not parts[0] or (split is not None and ":" in split.split("[")[0]):
            raise ValueError(f"data source {text!r}: expected tfds:NAME[:SPLIT]")
        rest = parts[0]
    elif kind == "shapes":
        rest, split = "", (rest or None)
    elif not rest:
        raise ValueError(f"data source {text!r}: {kind}: needs a path or glob after the colon")
    return SourceSpec(kind, rest, split, options, text)


def parse_mixture(source: str | Sequence[str | tuple[str, float]]) -> list[tuple[SourceSpec, float]]:
    """One source string, a list of them (equal weights) or of (string, weight) pairs.

    Returns (spec, weight) pairs with weights normalized to sum to 1.
    """
    entries = [source] if isinstance(source, str) else list(source)
    if not entries:
        raise ValueError("no data source given")
    pairs = [(e, 1.0) if isinstance(e, str) else (e[0], float(e[1])) for e in entries]
    if any(w <= 0 for _, w in pairs):
        raise ValueError(f"data source weights must be positive: {pairs}")
    total = sum(w for _, w in pairs)
    return [(parse_source(text), w / total) for text, w in pairs]


def expand_braces(pattern: str) -> list[str]:
    """Expands {a,b} alternatives and {000..099} zero-padded ranges, webdataset style."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if not match:
        return [pattern]
    inner = match.group(1)
    head, tail = pattern[: match.start()], pattern[match.end() :]
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", inner)
    if numeric:
        lo, hi = numeric.groups()
        width = len(lo)
        choices = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        choices = inner.split(",")
    return list(itertools.chain.from_iterable(expand_braces(head + c + tail) for c in choices))


def list_files(spec: SourceSpec) -> list[str]:
    """Sorted files named by the spec's pattern.

    Brace expansion first; names with glob characters (*?[) are globbed, plain
    names are kept even when missing, so that a missing shard of an explicit
    list is counted as a bad file instead of silently ignored. Raises when
    nothing exists at all.
    """
    files, found = set(), False
    for pattern in expand_braces(spec.target):
        if re.search(r"[*?\[]", pattern):
            matches = tf.io.gfile.glob(pattern)
            files.update(matches)
            found = found or bool(matches)
        else:
            files.add(pattern)
            found = found or tf.io.gfile.exists(pattern)
    if not found:
        raise FileNotFoundError(f"data source {spec.text!r}: {spec.target!r} matches no files")
    return sorted(files)


def open_binary(path: str) -> BinaryIO:
    """Opens a local file (buffered) or a remote one (gs://, ...) through tf.io.gfile."""
    if paths.is_remote(path):
        return tf.io.gfile.GFile(path, "rb")
    return open(path, "rb", buffering=1 << 20)  # noqa: SIM115 - the caller closes it
