"""One raw record as every reader yields it, and the checks that decide if it is usable.

Readers of every kind (tar shards, TFRecords, CSV, TFDS, shapes) turn what they
read into `Example`s or `Skipped` markers. Checks that can be done cheaply in
Python happen here, so that a bad record is counted under a precise reason
and never reaches TensorFlow ops that would raise: image bytes are sniffed for
a format tf can decode and for truncation, captions must be non-empty UTF-8.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

# Why a record or file was skipped; every counter the pipeline reports.
ERROR_KINDS: tuple[str, ...] = (
    "bad_image",  # not JPEG/PNG/WebP/GIF/BMP, truncated, or failed to decode
    "missing_image",  # no image field in the record, or the image file is missing
    "missing_caption",  # no caption field in the record
    "empty_caption",  # every caption empty or whitespace
    "non_utf8_caption",  # captions present but none is valid UTF-8
    "bad_label",  # label field missing or not an integer (when labels are requested)
    "bad_record",  # a record that cannot be parsed (TFRecord proto, CSV row)
    "bad_file",  # a shard or file that cannot be opened or is truncated/corrupt
)


@dataclasses.dataclass(frozen=True, slots=True)
class Example:
    """A usable record.

    image: encoded image bytes (JPEG, PNG, WebP, GIF or BMP).
    captions: one or more non-empty captions; empty when text is not requested.
    label: class index, -1 when labels are not requested.
    """

    image: bytes
    captions: tuple[str, ...]
    label: int


@dataclasses.dataclass(frozen=True, slots=True)
class Skipped:
    """A record or file that was skipped; `kind` is one of ERROR_KINDS, `where` names it."""

    kind: str
    where: str


Item = Example | Skipped


@dataclasses.dataclass(frozen=True)
class Fields:
    """Names of the record fields to read, each a tuple of alternatives (first present wins).

    caption is None when text is not needed, label is None when labels are not needed.
    """

    image: tuple[str, ...]
    caption: tuple[str, ...] | None
    label: tuple[str, ...] | None


def split_alternatives(key: str) -> tuple[str, ...]:
    """"jpg;png" -> ("jpg", "png")."""
    names = tuple(k.strip() for k in key.split(";") if k.strip())
    if not names:
        raise ValueError(f"empty field name {key!r}")
    return names


def first_present(record: dict, names: Sequence[str]):
    """The value of the first of `names` present in `record`, else None."""
    for name in names:
        if name in record:
            return record[name]
    return None


def image_looks_valid(data: bytes) -> bool:
    """True for complete-looking JPEG, PNG, WebP, GIF and BMP bytes.

    Cheap structural checks only (magic bytes, end markers, declared sizes):
    they catch non-images (HTML error pages, empty files), other formats and
    truncated downloads. Corruption inside a well-formed file is caught later
    when TensorFlow fails to decode it.
    """
    if len(data) < 16:
        return False
    if data[:3] == b"\xff\xd8\xff":  # JPEG: an EOI marker near the end (trailers allowed)
        return b"\xff\xd9" in data[-4096:]
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return b"IEND" in data[-64:]
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return int.from_bytes(data[4:8], "little") + 8 <= len(data)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return data.rstrip(b"\x00")[-1:] == b";"
    if data[:2] == b"BM":
        return int.from_bytes(data[2:6], "little") <= len(data)
    return False


def clean_captions(raw: Iterable[bytes | str]) -> tuple[str, ...] | str:
    """Valid, stripped captions, or the error kind when none is usable.

    bytes must decode as UTF-8; str must encode as UTF-8 (CSV files are read
    with surrogateescape, so undecodable bytes show up as lone surrogates).
    """
    good, saw_bad_utf8 = [], False
    for value in raw:
        try:
            text = value.decode("utf-8") if isinstance(value, bytes) else value
            text.encode("utf-8")
        except UnicodeError:
            saw_bad_utf8 = True
            continue
        text = text.strip()
        if text:
            good.append(text)
    if good:
        return tuple(good)
    return "non_utf8_caption" if saw_bad_utf8 else "empty_caption"


def make_item(
    image: bytes | None,
    captions: Sequence[bytes | str] | None,
    label: int | str | bytes | None,
    fields: Fields,
    where: str,
) -> Item:
    """Validates one record's raw fields into an Example, or the reason to skip it."""
    if image is None:
        return Skipped("missing_image", where)
    if not image_looks_valid(image):
        return Skipped("bad_image", where)
    texts: tuple[str, ...] = ()
    if fields.caption is not None:
        if captions is None:
            return Skipped("missing_caption", where)
        cleaned = clean_captions(captions)
        if isinstance(cleaned, str):
            return Skipped(cleaned, where)
        texts = cleaned
    index = -1
    if fields.label is not None:
        try:
            index = int(label.decode() if isinstance(label, bytes) else label)  # type: ignore[arg-type]
        except (TypeError, ValueError, UnicodeError):
            return Skipped("bad_label", where)
    return Example(bytes(image), texts, index)


class NoValidDataError(RuntimeError):
    """A source produced no usable record in a whole epoch (the message names the source)."""
