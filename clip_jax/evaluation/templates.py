"""Prompt template sets for zero-shot classification, by name or as explicit lists.

A template is a string with one ``{}`` where the class name goes:
``"a photo of a {}.".format("dog")``.
"""
from __future__ import annotations

from collections.abc import Sequence

# The 80 ImageNet prompts of OpenAI's CLIP (notebooks/Prompt_Engineering_for_ImageNet.ipynb).
OPENAI_IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "openai_imagenet": OPENAI_IMAGENET_TEMPLATES,
    "simple": ("a photo of a {}.",),
}

DEFAULT_TEMPLATES = "openai_imagenet"


def get_templates(name_or_list: str | Sequence[str]) -> tuple[str, ...]:
    """A template set by name (a key of TEMPLATE_SETS) or an explicit list, checked to hold one ``{}`` each."""
    if isinstance(name_or_list, str):
        if name_or_list not in TEMPLATE_SETS:
            known = sorted(TEMPLATE_SETS)
            raise ValueError(f"Unknown template set {name_or_list!r}: expected one of {known} or a list of templates")
        return TEMPLATE_SETS[name_or_list]
    templates = tuple(name_or_list)
    if not templates:
        raise ValueError("Template list is empty")
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise ValueError(f"Templates need exactly one '{{}}' for the class name; got {bad}")
    return templates
