"""`shapes`: a generated captioned image set for tests and the tiny CPU demo.

Each image holds one coloured shape (6 shapes x 6 colours, small or big, in
one of 9 places of a 3x3 grid) on a dark shaded background, with two captions
in varied wording ("a small red circle in the top left corner", "a photo of
a big blue square"). Image i of a split is a pure function of (data_seed,
split, i), so the set is the same on every machine and needs no download.

Splits: "train" and "val" use 30 (shape, colour) combinations; "eval" uses
only the 6 held-out ones (each shape and each colour held out once), to test
compositional generalization. Labels index the shape (default), the colour,
or the (shape, colour) combination; `classnames(label)` gives the names for
zero-shot evaluation and `TEMPLATES` the prompts.

Images leave as PNG bytes, so they enter the same decode and preprocessing
as real data.
"""
from __future__ import annotations

import dataclasses
import functools
import struct
import zlib

import numpy as np

from clip_jax.data.records import Example
from clip_jax.data.spec import SourceSpec

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "big": ("big", "large")}
# 3x3 grid cell (row, column) -> phrase.
PLACES = {
    (0, 0): "in the top left corner",
    (0, 1): "at the top",
    (0, 2): "in the top right corner",
    (1, 0): "on the left",
    (1, 1): "in the center",
    (1, 2): "on the right",
    (2, 0): "in the bottom left corner",
    (2, 1): "at the bottom",
    (2, 2): "in the bottom right corner",
}
CAPTION_TEMPLATES = (
    "a {size} {color} {shape} {place}",
    "a photo of a {size} {color} {shape}",
    "a {color} {shape}",
    "there is a {size} {shape} {place}, coloured {color}",
    "a picture of a {color} {shape} {place}",
    "the {shape} is {color} and {size}",
    "an image with a {size} {color} {shape}",
    "{color} {shape}, {size}, {place}",
)
TEMPLATES = ("a photo of a {}.", "a {} shape.", "a picture of a {}.", "an image with a {}.")
SPLITS = {"train": 0, "val": 1, "eval": 2}
LABELS = ("shape", "color", "combo")
# (shape, colour) index pairs: the eval split uses only the held-out ones.
EVAL_COMBOS = tuple((s, c) for s in range(len(SHAPES)) for c in range(len(COLORS)) if s == c)
TRAIN_COMBOS = tuple((s, c) for s in range(len(SHAPES)) for c in range(len(COLORS)) if s != c)
DEFAULT_SIZES = {"train": 10_000, "val": 1_000, "eval": 1_000}


def classnames(label: str = "shape") -> list[str]:
    """Class names for a label kind, index-aligned with the labels the source emits."""
    if label == "shape":
        return list(SHAPES)
    if label == "color":
        return list(COLORS)
    if label == "combo":
        return [f"{color} {shape}" for shape in SHAPES for color in COLORS]
    raise ValueError(f"shapes label must be one of {LABELS}, got {label!r}")


@dataclasses.dataclass(frozen=True)
class ShapesConfig:
    """What the `shapes[:SPLIT]#n=..&size=..&label=..&data_seed=..` options select."""

    split: str = "train"
    n: int = 10_000
    size: int = 64
    label: str = "shape"
    data_seed: int = 0

    @classmethod
    def from_spec(cls, spec: SourceSpec) -> ShapesConfig:
        split = spec.split or "train"
        if split not in SPLITS:
            raise ValueError(f"data source {spec.text!r}: shapes split must be one of {list(SPLITS)}")
        opts = spec.options
        label = opts.get("label", "shape")
        if label not in LABELS:
            raise ValueError(f"data source {spec.text!r}: shapes label must be one of {LABELS}")
        size = int(opts.get("size", 64))
        if size < 16:
            raise ValueError(f"data source {spec.text!r}: shapes size must be at least 16 px")
        return cls(split, int(opts.get("n", DEFAULT_SIZES[split])), size, label, int(opts.get("data_seed", 0)))


def _mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of a shape of radius r centred at dx = dy = 0."""
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.85 * r
    if shape == "triangle":
        return (dy <= 0.5 * r) & (np.abs(dx) <= (dy + r) * 0.577)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1.15 * r
    if shape == "cross":
        return ((np.abs(dx) <= 0.3 * r) & (np.abs(dy) <= r)) | ((np.abs(dy) <= 0.3 * r) & (np.abs(dx) <= r))
    d2 = dx * dx + dy * dy  # ring
    return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)


@functools.lru_cache(maxsize=4)
def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x), float32 [n, n] each."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) + 0.5
    return yy, xx


def _article(text: str) -> str:
    """Fixes "a orange" -> "an orange" and "a image" style slips in generated captions."""
    words = text.split(" ")
    for i in range(len(words) - 1):
        if words[i] in ("a", "A"):
            words[i] = words[i] + ("n" if words[i + 1][:1] in "aeiou" else "")
    return " ".join(words)


@dataclasses.dataclass(frozen=True)
class Rendered:
    """One generated sample: image uint8 [size, size, 3], two captions, and its factors."""

    image: np.ndarray
    captions: tuple[str, ...]
    shape: int
    color: int
    big: bool
    place: tuple[int, int]


def render(config: ShapesConfig, index: int) -> Rendered:
    """Generates sample `index` of `config.split`."""
    rng = np.random.default_rng([config.data_seed, SPLITS[config.split], index])
    combos = EVAL_COMBOS if config.split == "eval" else TRAIN_COMBOS
    shape, color = combos[rng.integers(len(combos))]
    big = bool(rng.integers(2))
    place = (int(rng.integers(3)), int(rng.integers(3)))
    n = config.size
    yy, xx = _grid(n)
    r = n * (rng.uniform(0.16, 0.19) if big else rng.uniform(0.08, 0.11))
    margin = 1.2 * r + 1  # keep the whole shape on the canvas
    cx = np.clip((place[1] + 0.5) * n / 3 + rng.uniform(-n / 24, n / 24), margin, n - margin)
    cy = np.clip((place[0] + 0.5) * n / 3 + rng.uniform(-n / 24, n / 24), margin, n - margin)
    base, slope = rng.integers(0, 40), rng.uniform(-20, 20)
    image = np.repeat((base + slope * yy / n + 20)[..., None], 3, axis=2).astype(np.uint8)
    mask = _mask(SHAPES[shape], xx - cx, yy - cy, r)
    rgb = np.clip(np.array(list(COLORS.values())[color]) + rng.integers(-15, 16, 3), 0, 255)
    image[mask] = rgb
    words = {
        "shape": SHAPES[shape],
        "color": list(COLORS)[color],
        "place": PLACES[place],
    }
    templates = rng.choice(len(CAPTION_TEMPLATES), size=2, replace=False)
    captions = tuple(
        _article(CAPTION_TEMPLATES[t].format(size=str(rng.choice(SIZE_WORDS["big" if big else "small"])), **words))
        for t in templates
    )
    return Rendered(image, captions, shape, color, big, place)


def encode_png(image: np.ndarray) -> bytes:
    """uint8 [H, W, 3] -> PNG bytes (no filtering, fast zlib level)."""
    h, w, _ = image.shape
    rows = np.concatenate([np.zeros((h, 1), np.uint8), image.reshape(h, w * 3)], axis=1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    pixels = zlib.compress(rows.tobytes(), 1)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def label_of(config: ShapesConfig, sample: Rendered) -> int:
    """The class index of a sample under `config.label` (see `classnames`)."""
    if config.label == "shape":
        return sample.shape
    if config.label == "color":
        return sample.color
    return sample.shape * len(COLORS) + sample.color


def example(config: ShapesConfig, index: int) -> Example:
    """Sample `index` as a pipeline record: PNG bytes, both captions, label."""
    sample = render(config, index)
    return Example(encode_png(sample.image), sample.captions, label_of(config, sample))
