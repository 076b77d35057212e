"""User paths that may name the local disk or a bucket (gs://, s3://, ...).

Everything clip_jax reads or writes outside the input pipeline goes through
`etils.epath` (as Orbax does); the pipeline uses `tf.io.gfile` (as tf.data
does). With TensorFlow installed both reach buckets through TensorFlow's file
systems. `os.path.abspath("gs://b/run")` would be `<cwd>/gs:/b/run`, hence `resolve`.
"""
from __future__ import annotations

import os

from etils import epath


def is_remote(path: epath.PathLike) -> bool:
    """True for URLs such as gs://bucket/dir, False for local paths."""
    return "://" in os.fspath(path)


def resolve(path: epath.PathLike) -> epath.Path:
    """The path as an epath.Path: local paths made absolute, URLs left as they are."""
    return epath.Path(path) if is_remote(path) else epath.Path(path).resolve()
