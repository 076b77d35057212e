"""clip_jax models with converted weights reproduce open_clip's outputs.

Fixtures come from tests/fixtures/make_open_clip_fixtures.py (open_clip with
perturbed random weights). The slow test reads full-size fixtures (ViT-B-32,
RN50) from $CLIP_JAX_FULL_FIXTURES, made with that script's --full flag.
"""
import glob
import json
import os

import numpy as np
import pytest

import clip_jax

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
# float32 against open_clip in float32: two libraries' kernels sum in different orders through
# 2-12 layers; measured at most 1.3e-6 (small models) and 4.3e-6 (full size).
TOLERANCE = 1e-5


def load_fixture(path):
    with np.load(path) as data:
        arrays = dict(data)
    inputs = {k[2:]: arrays.pop(k) for k in list(arrays) if k.startswith("__")}
    spec = json.loads(str(inputs.pop("model")))
    return arrays, inputs, spec


def check_parity(path):
    state_dict, ref, spec = load_fixture(path)
    model = clip_jax.create_model(spec["name"], **spec["overrides"])
    variables = clip_jax.weights.open_clip.from_torch_state_dict(state_dict, model)
    image_embeds = model.apply(variables, ref["images"], method=model.encode_image)
    text_embeds = model.apply(variables, ref["tokens"], method=model.encode_text)
    image_error = np.abs(np.asarray(image_embeds) - ref["image_embeds"]).max()
    text_error = np.abs(np.asarray(text_embeds) - ref["text_embeds"]).max()
    assert image_error <= TOLERANCE * max(1.0, np.abs(ref["image_embeds"]).max()), image_error
    assert text_error <= TOLERANCE * max(1.0, np.abs(ref["text_embeds"]).max()), text_error
    out = model.apply(variables, ref["images"], ref["tokens"])
    np.testing.assert_allclose(out["logit_scale"], ref["logit_scale"], rtol=1e-6)
    if "logit_bias" in ref:
        np.testing.assert_array_equal(out["logit_bias"], ref["logit_bias"])
    return image_error, text_error


@pytest.mark.parametrize("name", ["vit_small", "vit_small_laion", "rn_small_quickgelu", "siglip_small"])
def test_small_models_match_open_clip(name):
    """vit_small_laion has the LAION-scale ViTs' shapes (ViT-H/g/bigG-14): heads 40 wide, MLP int(80 * 4.3637).
    siglip_small is ViT-SO400M-14-SigLIP's structure at a small size (a timm trunk in a CustomTextCLIP):
    MAP pooling, no class token, bidirectional text read at the last position, a logit bias."""
    check_parity(os.path.join(FIXTURES, f"{name}.npz"))


@pytest.mark.slow
def test_full_size_models_match_open_clip():
    directory = os.environ.get("CLIP_JAX_FULL_FIXTURES")
    if not directory:
        pytest.skip("set CLIP_JAX_FULL_FIXTURES to the output of make_open_clip_fixtures.py --full")
    paths = sorted(glob.glob(os.path.join(directory, "*.npz")))
    assert paths, f"no .npz fixtures in {directory}"
    for path in paths:
        image_error, text_error = check_parity(path)
        print(f"{os.path.basename(path)}: max |diff| image {image_error:.2e}, text {text_error:.2e}")
