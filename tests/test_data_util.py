"""Builders of small data sets for the input pipeline tests (no tests here).

Every record's caption names it ("r<index>"), and `CharTokenizer` maps
characters to code points, so a test can read back from the tokens which
records a batch holds.
"""
from __future__ import annotations

import csv
import io
import os
import tarfile

import numpy as np
import tensorflow as tf
from PIL import Image

CONTEXT = 12


class CharTokenizer:
    """Stand-in tokenizer: one token per character (its code point), 0-padded."""

    def __call__(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), CONTEXT), np.int32)
        for i, text in enumerate(texts):
            codes = [ord(c) for c in text[:CONTEXT]]
            out[i, : len(codes)] = codes
        return out


def detokenize(tokens: np.ndarray) -> list[str]:
    """Inverse of CharTokenizer for [N, L] tokens."""
    return ["".join(chr(t) for t in row if t) for row in tokens]


def image_array(index: int, height: int = 20, width: int = 28) -> np.ndarray:
    """A smooth image whose colour encodes `index`."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.array([(index * 37) % 256, (index * 91) % 256, (index * 53) % 256])
    return np.clip(base + (x[..., None] * 2 + y[..., None]) % 20, 0, 255).astype(np.uint8)


def encode(array: np.ndarray, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def corrupt_jpeg(index: int = 0) -> bytes:
    """Well-formed JPEG framing (start and end markers) around garbage: only decoding can tell."""
    good = encode(image_array(index))
    return good[:20] + b"\xff\x00" * ((len(good) - 22) // 2) + b"\xff\xd9"


def write_tar(path: str, members: list[tuple[str, bytes]]) -> None:
    """A tar as webdataset/img2dataset write it (Python tarfile, pax format)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1700000000.5  # a float mtime makes tarfile write pax headers, as webdataset does
            tar.addfile(info, io.BytesIO(data))


def sample_members(index: int, caption: bytes | None = None, image: bytes | None = None) -> list[tuple[str, bytes]]:
    """img2dataset's three files for one sample."""
    key = f"{index:09d}"
    members = [(f"{key}.jpg", image if image is not None else encode(image_array(index)))]
    members.append((f"{key}.txt", caption if caption is not None else f"r{index}".encode()))
    members.append((f"{key}.json", f'{{"key": "{key}", "status": "success"}}'.encode()))
    return members


def write_wds(directory: str, shards: int, per_shard: int, start: int = 0) -> list[str]:
    """Shards 00000.tar... of `per_shard` good samples; returns their paths."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for s in range(shards):
        members = []
        for j in range(per_shard):
            members += sample_members(start + s * per_shard + j)
        path = os.path.join(directory, f"{s:05d}.tar")
        write_tar(path, members)
        paths.append(path)
    return paths


def tf_example(features: dict[str, list]) -> bytes:
    """A serialized tf.train.Example from {name: [bytes or str...] or [int...]}."""
    feature = {}
    for name, values in features.items():
        if isinstance(values[0], int):
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
        else:
            encoded = [v.encode() if isinstance(v, str) else v for v in values]
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=encoded))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def img2dataset_example(index: int) -> bytes:
    """A record as img2dataset's tfrecord writer makes it."""
    return tf_example({
        "key": [f"{index:09d}".encode()],
        "jpg": [encode(image_array(index))],
        "txt": [f"r{index}".encode()],
        "url": [b"http://example.com/x.jpg"],
        "width": [28],
    })


def write_tfrecords(path: str, records: list[bytes]) -> str:
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)
    return path


def write_csv(directory: str, rows: list[tuple[str, str]], name: str = "data.csv", delimiter: str = ",") -> str:
    """A CSV with columns filepath,caption; returns its path."""
    path = os.path.join(directory, name)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(["filepath", "caption"])
        writer.writerows(rows)
    return path


def write_image_files(directory: str, count: int, start: int = 0) -> list[tuple[str, str]]:
    """PNG files img<i>.png; returns (relative path, caption) rows."""
    os.makedirs(directory, exist_ok=True)
    rows = []
    for i in range(start, start + count):
        name = f"img{i}.png"
        with open(os.path.join(directory, name), "wb") as f:
            f.write(encode(image_array(i), "PNG"))
        rows.append((name, f"r{i}"))
    return rows


def write_tfds(data_dir: str) -> str:
    """A tiny TFDS dataset "toy_captions" (train: r0..r11, test: r100..r104) in `data_dir`.

    Features: image (PNG), captions/text (three per image, COCO-like), label (i % 3).
    """
    import tensorflow_datasets as tfds

    features = tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(20, 28, 3)),
        "captions": tfds.features.Sequence({"text": tfds.features.Text()}),
        "label": tfds.features.ClassLabel(num_classes=3),
    })

    def split(indices):
        return tf.data.Dataset.from_tensor_slices({
            "image": [image_array(i) for i in indices],
            "captions": {"text": [[f"r{i}", f"r{i}b", f"r{i}c"] for i in indices]},
            "label": [i % 3 for i in indices],
        })

    builder = tfds.dataset_builders.TfDataBuilder(
        name="toy_captions", version="1.0.0", data_dir=data_dir,
        split_datasets={"train": split(range(12)), "test": split(range(100, 105))}, features=features,
    )
    builder.download_and_prepare()
    return data_dir
