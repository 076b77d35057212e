"""TFDS datasets (`tfds:NAME[:SPLIT]`), read as raw records: images stay encoded.

Each process reads `tfds.even_splits(split, process_count)[process_index]`.
An epoch's order comes from TFDS's file shuffling with a per-epoch seed;
restarting at record k re-reads and drops k records (without decoding their
images). Nested features are addressed with "/", e.g. COCO captions'
`captions/text`, which yields the list of an image's captions.

Nothing is downloaded at run time: a dataset must be prepared in the data dir
beforehand (`tfds build NAME`), else DatasetNotFoundError says how.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from clip_jax.data.order import hash64
from clip_jax.data.records import Fields, Item, make_item

DEFAULT_FIELDS = {"image_key": "image", "caption_key": "caption;captions/text;text", "label_key": "label"}


class DatasetNotFoundError(FileNotFoundError):
    """A TFDS dataset that is not prepared in the data dir; the message says how to prepare it."""


def _not_prepared_message(builder: Any, source_text: str) -> str:
    """One line naming the dataset, the data dir looked in and how to prepare it (manual downloads too)."""
    name, root = builder.name, str(builder.data_dir_root)
    if builder.builder_config is not None:
        name = f"{name}/{builder.builder_config.name}"
    build = f"`tfds build {name} --data_dir={root}`"
    build += f" (or tfds.builder({name!r}, data_dir={root!r}).download_and_prepare())"
    manual = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
    if manual:
        how = (
            f"it needs a manual download: put its files into the TFDS manual_dir {root}/downloads/manual/ "
            f"({' '.join(manual.split())}), then run {build}"
        )
    else:
        how = f"prepare it once with {build}"
    return (
        f"data source {source_text!r}: TFDS dataset {name!r} is not prepared in {root!r} "
        f"(looked for {builder.data_dir}); {how}, or point #data_dir= at a prepared copy"
    )


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": x}} -> {"a/b": x}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _feature_paths(features: Any, prefix: str = "") -> list[str]:
    """All "/"-joined paths of a tfds FeaturesDict, looking through Sequence features."""
    import tensorflow_datasets as tfds

    paths = []
    for key, feature in features.items():
        while isinstance(feature, tfds.features.Sequence):
            feature = feature.feature
        if isinstance(feature, tfds.features.FeaturesDict):
            paths += _feature_paths(feature, f"{prefix}{key}/")
        else:
            paths.append(f"{prefix}{key}")
    return paths


def split_size(name: str, split: str, data_dir: str | None) -> int | None:
    """Records in a prepared dataset's split (slices such as "train[:10%]" included); None when not prepared."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
        return builder.info.splits[split].num_examples if builder.is_prepared() else None
    except (tfds.core.registered.DatasetNotFoundError, KeyError, ValueError):
        return None


class TfdsReader:
    """This process's share of one TFDS split, as Items in a seeded order per epoch."""

    def __init__(
        self,
        name: str,
        split: str,
        fields: Fields,
        *,
        data_dir: str | None,
        shuffle: bool,
        seed: int,
        process_index: int,
        process_count: int,
        source_text: str,
    ):
        import tensorflow_datasets as tfds

        try:
            self._builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
        except tfds.core.registered.DatasetNotFoundError:
            raise FileNotFoundError(f"data source {source_text!r}: TFDS knows no dataset {name!r}") from None
        if not self._builder.is_prepared():
            raise DatasetNotFoundError(_not_prepared_message(self._builder, source_text))
        splits = self._builder.info.splits
        if split.split("[")[0] not in splits:
            raise ValueError(f"data source {source_text!r}: no split {split!r}; available: {sorted(splits)}")
        paths = _feature_paths(self._builder.info.features)

        def resolve(names: tuple[str, ...] | None, what: str) -> tuple[str, ...] | None:
            if names is None:
                return None
            present = tuple(n for n in names if n in paths)
            if not present:
                raise ValueError(f"data source {source_text!r}: no {what} feature {'/'.join(names)} in {paths}")
            return present[:1]

        self.fields = Fields(
            resolve(fields.image, "image"), resolve(fields.caption, "caption"), resolve(fields.label, "label")
        )
        self._split = tfds.even_splits(split, n=process_count)[process_index] if process_count > 1 else split
        self._shuffle, self._seed, self._name = shuffle, seed, name

    def read(self, epoch: int, start: int) -> Iterator[Item]:
        """Items of `epoch` in order, from record `start` on."""
        import tensorflow_datasets as tfds

        decoders: dict = {}
        node = decoders
        *parents, leaf = self.fields.image[0].split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = tfds.decode.SkipDecoding()
        config = tfds.ReadConfig(shuffle_seed=hash64(self._seed, epoch) % 2**31, try_autocache=False)
        ds = self._builder.as_dataset(
            split=self._split, shuffle_files=self._shuffle, decoders=decoders, read_config=config
        )
        for index, record in enumerate(ds.skip(start).as_numpy_iterator(), start):
            flat = _flatten(record)
            captions = flat.get(self.fields.caption[0]) if self.fields.caption else None
            if isinstance(captions, (bytes, str)):
                captions = [captions]
            yield make_item(
                flat[self.fields.image[0]],
                None if captions is None else list(np.atleast_1d(captions)),
                flat.get(self.fields.label[0]) if self.fields.label else None,
                self.fields,
                f"{self._name}#{index}",
            )
