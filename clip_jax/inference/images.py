"""OpenAI's eval preprocessing of single images with PIL, as open_clip's `preprocess` does it.

    to_model_input = ImagePreprocess(224)
    x = to_model_input(PIL.Image.open("cat.jpg"))   # float32 [224, 224, 3], normalized

The steps and their order are torchvision's (open_clip's transform for
OpenAI-style models): bicubic resize of the short side to `size` (the long
side to int(size * long / short)), the central size x size crop (offsets
int(round((extent - size) / 2))), conversion to RGB, /255, and normalization
by the mean and std. PIL does the resampling itself, so the pixels are the
ones open_clip feeds its models (tests/test_images.py checks its stored
output on real photographs). EXIF orientation is not applied, as in open_clip.

The input pipeline's eval transform (clip_jax.data.preprocess, TensorFlow)
stays within one uint8 step of this one, so metrics from training-time evals
and from images preprocessed here agree.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

ImageLike = Image.Image | np.ndarray


def normalize(pixels: jax.Array, mean: Sequence[float] = OPENAI_MEAN, std: Sequence[float] = OPENAI_STD) -> jax.Array:
    """uint8 pixels [..., 3] -> float32 model inputs (x / 255 - mean) / std, on the device."""
    scale = jnp.asarray([1 / (255.0 * s) for s in std], jnp.float32)
    offset = jnp.asarray([-m / s for m, s in zip(mean, std, strict=True)], jnp.float32)
    return pixels.astype(jnp.float32) * scale + offset


def model_inputs(batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """A batch with its uint8 image fields ("images", "images_2", ...) normalized (`normalize`); others as they are.

    Training batches cross to the devices as uint8 pixels, a quarter of float32's bytes.
    """
    return {k: normalize(v) if k.startswith("images") and v.dtype == jnp.uint8 else v for k, v in batch.items()}


def as_pil(image: ImageLike) -> Image.Image:
    """A PIL image from a PIL image or a uint8 array [H, W], [H, W, 3] or [H, W, 4]."""
    if isinstance(image, Image.Image):
        return image
    array = np.asarray(image)
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(
            f"expected a PIL image or a uint8 array [H, W], [H, W, 3] or [H, W, 4]; got {array.dtype} {array.shape}"
        )
    return Image.fromarray(array)


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) with the short side `size` and the long one int(size * long / short), as torchvision."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Bicubic resize of the short side to `size`, then the central size x size crop (PIL, any mode)."""
    height, width = resized_shape(image.height, image.width, size)
    if (height, width) != (image.height, image.width):
        image = image.resize((width, height), resample=Image.Resampling.BICUBIC)
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


class ImagePreprocess:
    """One image (PIL or uint8 array) -> float32 [size, size, 3], normalized: the model's input."""

    def __init__(self, size: int, mean: Sequence[float] = OPENAI_MEAN, std: Sequence[float] = OPENAI_STD):
        self.size = size
        self._mean = np.asarray(mean, np.float32)
        self._std = np.asarray(std, np.float32)

    def pixels(self, image: ImageLike) -> np.ndarray:
        """The resized, cropped RGB pixels before normalization: uint8 [size, size, 3]."""
        return np.asarray(resize_center_crop(as_pil(image), self.size).convert("RGB"))

    def __call__(self, image: ImageLike) -> np.ndarray:
        return (self.pixels(image).astype(np.float32) / 255.0 - self._mean) / self._std

    def batch(self, images: Sequence[ImageLike]) -> np.ndarray:
        """A list of images -> float32 [N, size, size, 3]."""
        return np.stack([self(image) for image in images])
