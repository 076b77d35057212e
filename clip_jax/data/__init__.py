"""The tf.data input pipeline: TFDS, webdataset and TFRecord shards, CSV, and `shapes`.

    from clip_jax import data
    pipeline = data.Pipeline("wds:/data/cc3m/{00000..00331}.tar", training=True, batch_size=256)
    it = pipeline.iterator()              # numpy batches; it.get_state() / it.set_state(state)
    batches = data.DevicePrefetcher(it, data.batch_sharding(mesh))   # global jax.Arrays

Source strings are described in `spec`, resume in `iterator`, the batch
layout in `pipeline`, the generated data set in `shapes`.
"""
from clip_jax.data.device import DevicePrefetcher, make_global_batch
from clip_jax.data.iterator import DataIterator
from clip_jax.data.pipeline import Pipeline, make_dataset, make_iterator, merge_states
from clip_jax.data.preprocess import OPENAI_MEAN, OPENAI_STD
from clip_jax.data.records import ERROR_KINDS, NoValidDataError
from clip_jax.data.sources import num_records
from clip_jax.data.spec import parse_source
from clip_jax.data.tfds_source import DatasetNotFoundError
from clip_jax.runtime.sharding import batch_sharding

__all__ = [
    "ERROR_KINDS",
    "OPENAI_MEAN",
    "OPENAI_STD",
    "DataIterator",
    "DatasetNotFoundError",
    "DevicePrefetcher",
    "NoValidDataError",
    "Pipeline",
    "batch_sharding",
    "make_dataset",
    "make_global_batch",
    "make_iterator",
    "merge_states",
    "num_records",
    "parse_source",
]
