"""clip_jax.inference.images preprocesses as open_clip's `preprocess` does, and the input pipeline agrees with it.

The reference is open_clip's own output on real photographs at odd sizes, both
orientations and several PIL modes (tests/preprocess_cases.py), stored by
tests/fixtures/make_preprocess_fixtures.py.
"""
import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from clip_jax import data
from clip_jax.inference.images import OPENAI_MEAN, OPENAI_STD, ImagePreprocess, resized_shape
from preprocess_cases import FLOAT32_CASE, preprocess_cases

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "preprocess_open_clip.npz")
CASES = preprocess_cases()
# One uint8 step: PIL resamples in two passes and rounds the first to uint8, so a Pillow build
# other than the fixture's (13.0) may round a pixel the other way; with the same Pillow the
# pixels are identical (the test reports how many differ).
ONE_STEP = 1


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURE) as arrays:
        return dict(arrays)


@pytest.mark.parametrize("name", sorted(CASES))
def test_pixels_match_open_clip(name, reference):
    image, size = CASES[name]
    ours = ImagePreprocess(size).pixels(image).astype(int)
    theirs = reference[f"{name}/pixels"].astype(int)
    assert ours.shape == theirs.shape == (size, size, 3)
    difference = np.abs(ours - theirs)
    assert difference.max() <= ONE_STEP, f"{name}: {np.count_nonzero(difference)} pixels differ, by up to {difference.max()}"


def test_normalized_output_matches_open_clip(reference):
    image, size = CASES[FLOAT32_CASE]
    ours = ImagePreprocess(size)(image)
    theirs = reference[f"{FLOAT32_CASE}/output"]
    # Where the pixels agree both sides compute (k / 255 - mean) / std in float32: a few ulps of values
    # up to 2.2; a pixel one step off would differ by 1 / (255 * std) > 0.014.
    same = np.all(ImagePreprocess(size).pixels(image) == reference[f"{FLOAT32_CASE}/pixels"], axis=-1)
    np.testing.assert_allclose(ours[same], theirs[same], rtol=0, atol=2e-6)
    assert ours.dtype == np.float32 and same.mean() > 0.99


def test_arrays_and_pil_images_agree():
    image, size = CASES["chelsea_odd_portrait_64"]
    preprocess = ImagePreprocess(size)
    np.testing.assert_array_equal(preprocess(np.asarray(image)), preprocess(image))
    gray = CASES["chelsea_gray_64"][0]
    np.testing.assert_array_equal(preprocess(np.asarray(gray)), preprocess(gray))
    batch = preprocess.batch([image, gray])
    assert batch.shape == (2, size, size, 3)
    np.testing.assert_array_equal(batch[1], preprocess(gray))
    with pytest.raises(ValueError, match="uint8"):
        preprocess(np.asarray(image, np.float32))
    with pytest.raises(ValueError, match=r"\(5, 5, 2\)"):
        preprocess(np.zeros((5, 5, 2), np.uint8))


@pytest.mark.parametrize(
    "height, width, size, expected",
    [(300, 451, 224, (224, 336)), (451, 300, 224, (336, 224)), (17, 23, 64, (64, 86)), (64, 64, 64, (64, 64))],
)
def test_resized_shape_truncates_the_long_side(height, width, size, expected):
    assert resized_shape(height, width, size) == expected  # 224 * 451 / 300 = 336.7 -> 336, as torchvision


@pytest.mark.parametrize("name", [n for n in sorted(CASES) if CASES[n][0].mode == "RGB"])
def test_input_pipeline_eval_transform_within_one_step(name):
    """The tf.data eval transform (training-time evals, the eval CLI) against the PIL one, on PNG bytes."""
    image, size = CASES[name]
    png = io.BytesIO()
    image.save(png, format="PNG")
    tf_pixels = data.preprocess.resize_center_crop(tf.constant(png.getvalue()), size)
    tf_input = data.preprocess.Normalizer()(tf_pixels[None])[0].numpy()
    ours = ImagePreprocess(size)(image)
    step = 1 / (255 * np.asarray(OPENAI_STD))  # one uint8 step in normalized units, per channel
    assert np.all(np.abs(tf_input - ours) <= step * ONE_STEP + 1e-5), name
    assert np.allclose(-np.asarray(OPENAI_MEAN) / np.asarray(OPENAI_STD), ImagePreprocess(size)(Image.new("RGB", (9, 9)))[0, 0])
