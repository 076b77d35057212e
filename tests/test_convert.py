"""Weight import: errors name bad keys, OpenAI weights warn on GELU models (the command line:
integration/test_command_lines.py)."""
import json
import os
import warnings

import jax
import numpy as np
import pytest

import clip_jax
from clip_jax.weights.open_clip import from_torch_state_dict
from clip_jax.weights.torch_layout import ConversionError

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "vit_small.npz")


@pytest.fixture(scope="module")
def fixture():
    with np.load(FIXTURE) as data:
        arrays = dict(data)
    ref = {k[2:]: arrays.pop(k) for k in list(arrays) if k.startswith("__")}
    spec = json.loads(str(ref.pop("model")))
    return arrays, ref, spec


def test_missing_unexpected_and_misshaped_keys_are_named(fixture):
    state_dict, _, spec = fixture
    model = clip_jax.create_model(spec["name"], **spec["overrides"])
    broken = dict(state_dict)
    del broken["visual.ln_post.bias"]
    broken["visual.extra.weight"] = np.zeros(3, np.float32)
    broken["text_projection"] = np.zeros((5, 5), np.float32)
    with pytest.raises(ConversionError) as error:
        from_torch_state_dict(broken, model)
    message = str(error.value)
    assert "visual.ln_post.bias" in message and "missing" in message
    assert "visual.extra.weight" in message and "unexpected" in message
    assert "text_projection: shape (5, 5)" in message


def test_half_precision_weights_convert(fixture):
    state_dict, ref, spec = fixture
    model = clip_jax.create_model(spec["name"], **spec["overrides"])
    half = {k: v.astype(np.float16) for k, v in state_dict.items()}
    variables = from_torch_state_dict(half, model)
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(variables))
    out = model.apply(variables, ref["images"], method=model.encode_image)
    # float16 keeps 11 bits: each weight moves by up to 2^-11 of itself, through a few layers of embeddings ~1
    np.testing.assert_allclose(out, ref["image_embeds"], atol=0.05)


def test_openai_weights_warn_on_gelu_model_only(fixture):
    state_dict, _, spec = fixture
    openai = {**state_dict, "input_resolution": np.array(32), "context_length": np.array(16), "vocab_size": np.array(512)}
    gelu = clip_jax.create_model(spec["name"], **spec["overrides"])
    with pytest.warns(UserWarning, match="quickgelu"):
        from_torch_state_dict(openai, gelu)
    quick = clip_jax.create_model(spec["name"], **{**spec["overrides"], "activation": "quick_gelu"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_torch_state_dict(openai, quick)


def test_scan_model_gets_stacked_layers(fixture):
    state_dict, ref, spec = fixture
    model = clip_jax.create_model(spec["name"], **spec["overrides"], scan_layers=True)
    variables = from_torch_state_dict(state_dict, model)
    assert variables["params"]["visual"]["transformer"]["resblocks"]["ln_1"]["scale"].shape == (2, 64)
    out = model.apply(variables, ref["tokens"], method=model.encode_text)
    np.testing.assert_allclose(out, ref["text_embeds"], atol=1e-5)  # parity tolerance (test_parity.TOLERANCE)


def test_missing_checkpoint_file_is_named(tmp_path):
    from clip_jax.import_weights import read_state_dict

    with pytest.raises(FileNotFoundError, match="nope.pt"):
        read_state_dict(str(tmp_path / "nope.pt"))
