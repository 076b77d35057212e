"""Image preprocessing in TensorFlow: encoded bytes -> uint8 pixels [size, size, 3] -> normalized batches.

Training: random resized crop (area fraction `scale`, aspect ratio `ratio`,
seeded per example so the stream is reproducible), JPEGs decoded only inside
the crop window and, where the window is at least twice the output on its
short side, at a reduced DCT scale (1/2, 1/4 or 1/8: libjpeg's own
downsampling, nearly free), then a resize to size x size (below). Eval: bicubic resize
of the short side to `size` (antialiased, JPEG decoded with the accurate
DCT, as PIL and open_clip do), then a center crop: within one uint8 step of
PIL (clip_jax.inference.images) everywhere, because it resamples as PIL does, width
first, rounding and clipping to uint8 before the height pass (without that
step, overshoot at sharp edges differs from PIL by up to 4 steps).

Each image comes out as uint8 pixels, rounded as PIL rounds: a quarter of
float32's bytes through batching, and what training sends to the devices.
`Normalizer` normalizes whole batches in one XLA-fused pass where float32
model inputs are wanted: TensorFlow's own elementwise kernels broadcast over
the channel axis slowly.

Resizes in training that shrink the crop by more than 1.25x average the
pixels each output pixel covers (area resampling: antialiased, a box
filter); smaller ones are plain bicubic, indistinguishable from the
antialiased one at such scales (img2dataset's usual 256 px output). TF's
antialiased resizes (ScaleAndTranslate) cost more than decoding the JPEG:
with an antialiased bilinear resize there, the training pipeline ran at 0.57x
the rate it has with area resampling (benchmarks/input_pipeline.py: 443
against 772 images/s on 2 cores).
"""
from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from clip_jax.inference.images import OPENAI_MEAN, OPENAI_STD
_ANTIALIAS_ABOVE = 1.25
# The scales libjpeg decodes at (1/r of each side), in increasing r.
_DCT_RATIOS = (1, 2, 4, 8)


def decode(data: tf.Tensor, accurate: bool = False) -> tf.Tensor:
    """Encoded JPEG/PNG/WebP/GIF/BMP bytes -> uint8 [H, W, 3] (first frame of a GIF)."""

    def jpeg() -> tf.Tensor:
        return tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE" if accurate else "")

    def other() -> tf.Tensor:
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        return image

    return tf.cond(tf.io.is_jpeg(data), jpeg, other)


def _resize(image: tf.Tensor, height: tf.Tensor, width: tf.Tensor, antialias: bool) -> tf.Tensor:
    return tf.image.resize(image, tf.stack([height, width]), method="bicubic", antialias=antialias)


def _resize_as_pil(image: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """Antialiased bicubic resize in PIL's two passes: width, rounded and clipped to uint8, then height.

    A pass that keeps its extent is the identity (the kernel is 1 at 0 and 0 at
    other integers), as PIL skips it.
    """
    wide = _resize(image, tf.shape(image)[0], width, antialias=True)
    wide = tf.clip_by_value(tf.floor(wide + 0.5), 0.0, 255.0)  # PIL rounds half up, then clips
    return _resize(wide, height, width, antialias=True)


def random_resized_crop(
    data: tf.Tensor,
    seed: tf.Tensor,
    size: int,
    scale: Sequence[float] = (0.9, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
) -> tf.Tensor:
    """Training crop of encoded bytes -> uint8 pixels [size, size, 3].

    seed: int32/int64 [2], one per example.
    """

    def window(shape: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
            shape,
            bounding_boxes=tf.zeros([1, 0, 4]),
            seed=seed,
            min_object_covered=0.0,
            aspect_ratio_range=tuple(ratio),
            area_range=tuple(scale),
            max_attempts=10,
            use_image_if_no_bounding_boxes=True,
        )
        return begin[:2], extent[:2]

    def jpeg() -> tf.Tensor:
        begin, extent = window(tf.image.extract_jpeg_shape(data))
        # libjpeg scales by 1/r while decoding (the crop window then counts scaled pixels): the largest r
        # that keeps the crop at least `size` on its short side, so the resize below still shrinks.
        scale = tf.reduce_sum(tf.cast(tf.reduce_min(extent) >= size * tf.constant(_DCT_RATIOS[1:]), tf.int32))

        def decode_scaled(ratio: int) -> tf.Tensor:
            window = tf.concat([begin // ratio, extent // ratio], 0)
            return tf.image.decode_and_crop_jpeg(data, window, channels=3, ratio=ratio)

        return tf.switch_case(scale, [lambda r=r: decode_scaled(r) for r in _DCT_RATIOS])

    def other() -> tf.Tensor:
        image = decode(data)
        begin, extent = window(tf.shape(image))
        return tf.slice(image, tf.concat([begin, [0]], 0), tf.concat([extent, [3]], 0))

    crop = tf.cond(tf.io.is_jpeg(data), jpeg, other)
    crop.set_shape([None, None, 3])
    shrink = tf.cast(tf.reduce_min(tf.shape(crop)[:2]), tf.float32) / size
    resized = tf.cond(
        shrink > _ANTIALIAS_ABOVE,
        lambda: tf.image.resize(crop, [size, size], method="area"),
        lambda: _resize(crop, size, size, antialias=False),
    )
    resized.set_shape([size, size, 3])
    return to_uint8(resized)


def resize_center_crop(data: tf.Tensor, size: int) -> tf.Tensor:
    """Eval transform of encoded bytes -> uint8 pixels [size, size, 3].

    Short side resized to `size` (the long side to int(size * long / short),
    as torchvision does), then the central size x size crop.
    """
    image = decode(data, accurate=True)
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    short = tf.minimum(h, w)
    new_h = tf.where(h == short, size, tf.cast(size * h / short, tf.int32))
    new_w = tf.where(w == short, size, tf.cast(size * w / short, tf.int32))
    resized = _resize_as_pil(image, new_h, new_w)
    top = tf.cast(tf.round((new_h - size) / 2), tf.int32)
    left = tf.cast(tf.round((new_w - size) / 2), tf.int32)
    crop = resized[top : top + size, left : left + size]
    crop.set_shape([size, size, 3])
    return to_uint8(crop)


def to_uint8(pixels: tf.Tensor) -> tf.Tensor:
    """float32 pixel values [..., 3] -> uint8, rounded half up and clipped as PIL's resize output is.

    saturate_cast clips to [0, 255] and truncates, which for x + 0.5 >= 0 is floor(x + 0.5).
    """
    return tf.saturate_cast(pixels + 0.5, tf.uint8)


class Normalizer:
    """uint8 pixels [..., 3] -> float32 (x / 255 - mean) / std, XLA-fused."""

    def __init__(self, mean: Sequence[float] = OPENAI_MEAN, std: Sequence[float] = OPENAI_STD):
        self._scale = tf.constant([1 / (255.0 * s) for s in std], tf.float32)
        self._offset = tf.constant([-m / s for m, s in zip(mean, std, strict=True)], tf.float32)
        self._fn = tf.function(self._normalize, jit_compile=True)

    def _normalize(self, images: tf.Tensor) -> tf.Tensor:
        return tf.cast(images, tf.float32) * self._scale + self._offset

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        return self._fn(images)
