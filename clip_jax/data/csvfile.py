"""A CSV of image paths and captions (and labels), e.g. `filepath,caption` as open_clip reads.

Relative image paths are resolved against the CSV's directory. The file is
read once into memory (paths and captions only); images are read when their
row comes up, and a missing image file is skipped and counted.
"""
from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence

import tensorflow as tf

from clip_jax.data.records import Fields, Item, Skipped, make_item
from clip_jax.data.spec import SourceSpec, open_binary
from clip_jax.runtime import paths

DEFAULT_FIELDS = {"image_key": "filepath;image;path", "caption_key": "caption;title;text", "label_key": "label"}

Row = tuple[str | None, str | None, str | None]  # image path, caption, label


def _column(header: Sequence[str], names: tuple[str, ...] | None, spec: SourceSpec, what: str) -> str | None:
    """The first of `names` in the header; raises naming the file when none is."""
    if names is None:
        return None
    for name in names:
        if name in header:
            return name
    raise ValueError(f"data source {spec.text!r}: no {what} column {'/'.join(names)} in header {list(header)}")


def load_rows(spec: SourceSpec, fields: Fields) -> list[Row]:
    """All rows of the CSV as (path, caption, label) strings (None where a row is short).

    Undecodable bytes are kept as lone surrogates so that a bad caption skips
    one row instead of failing the file.
    """
    delimiter = spec.options.get("delimiter", ",")
    delimiter = "\t" if delimiter == "tab" else delimiter
    with open_binary(spec.target) as f:
        text = f.read().decode("utf-8", "surrogateescape")
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = reader.fieldnames or []
    image = _column(header, fields.image, spec, "image")
    caption = _column(header, fields.caption, spec, "caption")
    label = _column(header, fields.label, spec, "label")
    return [
        (row.get(image), row.get(caption) if caption else None, row.get(label) if label else None) for row in reader
    ]


def row_item(row: Row, base_dir: str, fields: Fields, where: str) -> Item:
    """Reads one row's image file and validates the row."""
    path, caption, label = row
    if not path:
        return Skipped("bad_record", where)
    if not (os.path.isabs(path) or paths.is_remote(path)):
        path = os.path.join(base_dir, path)
    try:
        with open_binary(path) as f:
            image = f.read()
    except (OSError, tf.errors.OpError):
        return Skipped("missing_image", path)
    return make_item(image, None if caption is None else [caption], label, fields, path)
