"""Webdataset tar shards, as img2dataset writes them.

A shard `00000.tar` holds `000000000.jpg`, `000000000.txt`, `000000000.json`,
`000000001.jpg`, ...: consecutive members sharing a key (the name up to the
first dot of its base name) form one sample, the rest of the name is the
field ("jpg", "txt", "cls", ...). The tar format is parsed here directly
(ustar, GNU long names and pax `path` records), which is several times faster
than `tarfile` and reads a stream front to back without seeking.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import BinaryIO

import tensorflow as tf

from clip_jax.data.records import Fields, Item, Skipped, first_present, make_item
from clip_jax.data.spec import open_binary

DEFAULT_FIELDS = {"image_key": "jpg;jpeg;png;webp", "caption_key": "txt", "label_key": "cls"}
_BLOCK = 512


class TarError(Exception):
    """A truncated or corrupt tar stream."""


def _number(field: bytes) -> int:
    """A tar numeric field: octal text, or base-256 when the high bit is set."""
    if field[:1] and field[0] & 0x80:
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _pax_path(data: bytes) -> bytes | None:
    """The `path` record of a pax extended header ("LEN key=value\\n" records), if any."""
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        length = int(data[pos:space])
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        if key == b"path":
            return value
        pos += length
    return None


def iter_tar(f: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """(name, contents) of each regular file in a tar stream; raises TarError when corrupt."""
    long_name: bytes | None = None
    while True:
        header = f.read(_BLOCK)
        if not header or header.count(0) == _BLOCK:
            return
        if len(header) < _BLOCK:
            raise TarError("truncated header")
        try:
            stored = _number(header[148:156])
            size = _number(header[124:136])
        except ValueError as e:
            raise TarError(f"bad header: {e}") from None
        if stored != sum(header[:148]) + 8 * 32 + sum(header[156:]):
            raise TarError("header checksum mismatch")
        kind = header[156:157]
        data = f.read(size)
        if len(data) < size:
            raise TarError("truncated member")
        f.read(-size % _BLOCK)
        if kind in (b"0", b"\0", b"7"):
            name = long_name or header[:100].split(b"\0", 1)[0]
            prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" else b""
            if prefix and not long_name:
                name = prefix + b"/" + name
            long_name = None
            yield name.decode("utf-8", "replace"), data
        elif kind == b"L":
            long_name = data.split(b"\0", 1)[0]
        elif kind == b"x":
            long_name = _pax_path(data) or long_name


def split_name(name: str) -> tuple[str, str]:
    """"dir/000000001.jpg" -> ("dir/000000001", "jpg"); fields are lower-cased."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1 :].lower()


def iter_samples(members: Iterator[tuple[str, bytes]]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Groups consecutive members by key into (key, {field: bytes}) samples."""
    key, sample = None, {}
    for name, data in members:
        k, field = split_name(name)
        if k != key and sample:
            yield key, sample
            sample = {}
        key = k
        sample[field] = data
    if sample:
        yield key, sample


def read_shard(path: str, fields: Fields, keep: Callable[[int], bool]) -> Iterator[Item]:
    """Items of one shard; `keep(i)` selects this process's records when shards are shared.

    An unreadable or truncated shard ends with one Skipped("bad_file") after
    the samples read before the damage.
    """
    index = 0
    try:
        with open_binary(path) as f:
            for key, sample in iter_samples(iter_tar(f)):
                if keep(index):
                    caption = first_present(sample, fields.caption) if fields.caption else None
                    yield make_item(
                        first_present(sample, fields.image),
                        None if caption is None else [caption],
                        first_present(sample, fields.label) if fields.label else None,
                        fields,
                        f"{path}:{key}",
                    )
                index += 1
    except (OSError, TarError, tf.errors.OpError) as e:
        if keep(index):
            yield Skipped("bad_file", f"{path}: {e}")
