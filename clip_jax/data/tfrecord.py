"""TFRecord files of tf.train.Example, as img2dataset (and most converters) write them.

img2dataset's tfrecord output stores the image under "jpg" and the caption
under "txt" (plus "key", "url", "caption" and other metadata); other writers
use "image" / "image/encoded" and "caption". The defaults accept all of these.

Records are framed in Python (length, masked CRC32C of the length, data,
CRC of the data): the length CRC is checked so a corrupt length cannot make
the reader allocate garbage; the data CRC is not (too slow in Python), a
damaged payload shows up as an unparsable record or an undecodable image.
"""
from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import BinaryIO

import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.example import example_pb2

from clip_jax.data.records import Fields, Item, Skipped, make_item
from clip_jax.data.spec import open_binary

DEFAULT_FIELDS = {"image_key": "jpg;image;image/encoded", "caption_key": "txt;caption", "label_key": "label;cls"}


class RecordError(Exception):
    """A truncated or corrupt TFRecord file."""


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum: CRC32C, rotated right by 15 bits plus a constant."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def iter_records(f: BinaryIO) -> Iterator[bytes]:
    """Payloads of a TFRecord stream; raises RecordError when truncated or corrupt."""
    while True:
        header = f.read(12)
        if not header:
            return
        if len(header) < 12:
            raise RecordError("truncated record header")
        (length,) = struct.unpack("<Q", header[:8])
        if struct.unpack("<I", header[8:])[0] != masked_crc32c(header[:8]):
            raise RecordError("corrupt record length")
        data = f.read(length)
        if len(data) < length or len(f.read(4)) < 4:
            raise RecordError("truncated record")
        yield data


def _values(example: example_pb2.Example, names: tuple[str, ...]) -> list | None:
    """Values of the first of `names` present in the Example (bytes, ints or floats)."""
    features = example.features.feature
    for name in names:
        if name in features:
            kind = features[name].WhichOneof("kind")
            return list(getattr(features[name], kind).value) if kind else []
    return None


def example_item(data: bytes, fields: Fields, where: str) -> Item:
    """One serialized tf.train.Example -> Item."""
    try:
        example = example_pb2.Example.FromString(data)
    except DecodeError:
        return Skipped("bad_record", where)
    images = _values(example, fields.image)
    image = images[0] if images and isinstance(images[0], bytes) else None
    captions = _values(example, fields.caption) if fields.caption else None
    labels = _values(example, fields.label) if fields.label else None
    return make_item(image, captions, labels[0] if labels else None, fields, where)


def read_file(path: str, fields: Fields, keep: Callable[[int], bool]) -> Iterator[Item]:
    """Items of one TFRecord file; `keep(i)` selects this process's records when files are shared.

    An unreadable or truncated file ends with one Skipped("bad_file").
    """
    index = 0
    try:
        with open_binary(path) as f:
            for data in iter_records(f):
                if keep(index):
                    yield example_item(data, fields, f"{path}#{index}")
                index += 1
    except (OSError, RecordError, tf.errors.OpError) as e:
        if keep(index):
            yield Skipped("bad_file", f"{path}: {e}")
