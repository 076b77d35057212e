"""The preprocessing test inputs: real photographs at odd sizes, both orientations and several PIL modes.

Shared by tests/test_images.py and tests/fixtures/make_preprocess_fixtures.py
(which stores open_clip's output on them), built with PIL operations whose
output does not depend on the PIL version (decode, crop, transpose, convert
to L, putalpha).
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

PHOTOS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "photos")
FLOAT32_CASE = "chelsea_odd_64"  # the case whose float32 output the fixture keeps too


def photo(name: str) -> Image.Image:
    """A committed photograph ("chelsea" 451 x 300 or "coffee" 600 x 400), RGB."""
    with Image.open(os.path.join(PHOTOS, f"{name}.jpg")) as image:
        return image.convert("RGB")


def preprocess_cases() -> dict[str, tuple[Image.Image, int]]:
    """name -> (input image, model image size)."""
    cat, coffee = photo("chelsea"), photo("coffee")
    alpha = Image.fromarray(np.tile(np.linspace(0, 255, cat.width).astype(np.uint8), (cat.height, 1)))
    rgba = cat.copy()
    rgba.putalpha(alpha)
    return {
        "chelsea_224": (cat, 224),  # landscape, downscaled
        "coffee_portrait_224": (coffee.transpose(Image.Transpose.ROTATE_90), 224),
        "chelsea_odd_64": (cat.crop((13, 7, 13 + 301, 7 + 203)), 64),  # odd sides: crop offsets round
        "chelsea_odd_portrait_64": (cat.crop((40, 11, 40 + 97, 11 + 233)), 64),
        "coffee_tiny_64": (coffee.crop((200, 100, 223, 117)), 64),  # 23 x 17: upscaled
        "coffee_square_64": (coffee.crop((0, 0, 333, 333)), 64),
        "chelsea_gray_64": (cat.convert("L"), 64),
        "chelsea_rgba_64": (rgba, 64),
        "coffee_exact_64": (coffee.crop((5, 5, 69, 105)), 64),  # short side already 64: no resize
    }
