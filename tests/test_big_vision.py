"""clip_jax.weights.big_vision: big_vision SigLIP `.npz` -> a transformers SiglipModel's config and state dict.

Fixtures come from tests/fixtures/make_big_vision_fixtures.py (a tiny SiglipModel with every tensor
redrawn, written in big_vision's per-layer layout, and the key/shape lists of two full-size SigLIPs);
no torch or transformers is needed here.
"""
import functools
import json
import os
import re

import flax.linen as nn
import jax
import numpy as np
import pytest

import clip_jax
from clip_jax import import_weights
from clip_jax.weights.big_vision import is_big_vision, to_transformers
from clip_jax.weights.into_state import load_into_state
from clip_jax.weights.sources import read_weights
from clip_jax.weights.torch_layout import ConversionError

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
with open(os.path.join(FIXTURES, "big_vision_siglip_keys.json")) as f:
    FULL = json.load(f)["models"]


@functools.lru_cache(maxsize=None)
def _tiny() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    with np.load(os.path.join(FIXTURES, "big_vision_siglip_tiny.npz")) as data:
        arrays = dict(data)
    references = {k[2:]: arrays.pop(k) for k in list(arrays) if k.startswith("__")}
    return arrays, references


def tiny() -> dict[str, np.ndarray]:
    """A fresh copy of the tiny checkpoint's key -> array dict (the arrays are shared, read-only)."""
    return dict(_tiny()[0])


def scan(arrays: dict[str, np.ndarray], encoder: str) -> dict[str, np.ndarray]:
    """Stacks `{encoder}/encoderblock_{i}/...` into `{encoder}/encoderblock/...` [depth, ...] (nn.scan's layout)."""
    pattern = re.compile(rf"({re.escape(encoder)}/encoderblock)_(\d+)(/.*)")
    blocks: dict[str, dict[int, np.ndarray]] = {}
    out = {}
    for key, a in arrays.items():
        if m := pattern.fullmatch(key):
            blocks.setdefault(m.group(1) + m.group(3), {})[int(m.group(2))] = a
        else:
            out[key] = a
    out.update({key: np.stack([layers[i] for i in range(len(layers))]) for key, layers in blocks.items()})
    return out


def fingerprint(a: np.ndarray) -> float:
    """As in make_big_vision_fixtures.py: sum(x.ravel() * sin(1 + arange(n))) in float64."""
    return float(np.dot(a.ravel().astype(np.float64), np.sin(1.0 + np.arange(a.size))))


def test_is_big_vision():
    arrays = tiny()
    assert is_big_vision(arrays)
    assert is_big_vision({k.removeprefix("params/"): v for k, v in arrays.items()})
    assert not is_big_vision({k: v for k, v in arrays.items() if not k.startswith("params/txt/")})
    assert not is_big_vision({"visual.conv1.weight": np.zeros(1), "text_projection": np.zeros(1)})


def test_tiny_is_transformers_state_dict():
    """Every tensor, its shape and its layout (a position-weighted sum) equal the SiglipModel's own."""
    config, state = to_transformers(tiny())
    reference = json.loads(str(_tiny()[1]["transformers"]))
    assert config == reference["config"]
    assert list(state) == list(reference["state_dict"])
    for key, (shape, value) in reference["state_dict"].items():
        assert list(state[key].shape) == shape, key
        assert state[key].dtype == np.float32, key
        assert fingerprint(state[key]) == pytest.approx(value, rel=1e-9, abs=1e-9), key


LAYOUTS = {
    "scanned": lambda a: scan(scan(a, "params/img/Transformer"), "params/txt/Encoder_0"),
    "image scanned": lambda a: scan(a, "params/img/Transformer"),
    "no prefix": lambda a: {k.removeprefix("params/"): v for k, v in a.items()},
    "scanned, no prefix": lambda a: {k.removeprefix("params/"): v for k, v in LAYOUTS["scanned"](a).items()},
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_agree(layout):
    config, state = to_transformers(tiny())
    other_config, other_state = to_transformers(LAYOUTS[layout](tiny()))
    assert other_config == config
    assert list(other_state) == list(state)
    for key, a in state.items():
        np.testing.assert_array_equal(other_state[key], a, err_msg=key)


@pytest.mark.parametrize("name", FULL)
def test_full_size_shapes(name):
    """A full-size SigLIP's keys, as zero-stride views (no memory), give the transformers shapes and config."""
    model = FULL[name]
    arrays = {k: np.broadcast_to(np.float32(0), shape) for k, shape in model["big_vision"].items()}
    config, state = to_transformers(arrays)
    assert config == model["config"]
    assert {k: list(v.shape) for k, v in state.items()} == model["transformers"]
    assert list(state) == list(model["transformers"])


def _put(key: str, shape: tuple[int, ...]):
    """Adds `key`, or replaces its array, with zeros of `shape`."""
    return lambda a: {**a, key: np.zeros(shape, np.float32)}


def _drop(pattern: str):
    return lambda a: {k: v for k, v in a.items() if not re.fullmatch(pattern, k)}


MISFITS = {
    "image head": (_put("params/img/head/kernel", (32, 10)), r"\['params/img/head/kernel'\].*image `head` Dense"),
    "class token": (_put("params/img/cls", (1, 1, 32)), r"params/img/cls.*class token"),
    "pre_logits": (_put("params/img/pre_logits/bias", (32,)), r"params/img/pre_logits/bias.*rep_size"),
    "BERT text tower": (
        _put("params/txt/BertEncoder_0/encoder_norm/scale", (24,)), r"params/txt/BertEncoder_0/encoder_norm/scale.*BERT"
    ),
    "text MAP pooling": (_put("params/txt/MAPHead_0/probe", (1, 1, 24)), r"params/txt/MAPHead_0/probe.*last token"),
    "no MAP head": (_drop(r"params/img/MAPHead_0/.*"), r"params/img/MAPHead_0.*MAP head"),
    "missing key": (
        _drop(r"params/txt/Encoder_0/encoderblock_1/LayerNorm_1/bias"),
        r"missing keys: \['params/txt/Encoder_0/encoderblock_1/LayerNorm_1/bias'\]",
    ),
    "missing bias b": (_drop(r"params/b"), r"missing keys: \['params/b'\]"),
    "missing first block": (
        _drop(r"params/img/Transformer/encoderblock_0/.*"),
        r"missing keys: \['params/img/Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel'\]",
    ),
    "unexpected key": (
        _put("params/img/Transformer/encoderblock_0/extra/kernel", (2, 2)),
        r"unexpected keys: \['params/img/Transformer/encoderblock_0/extra/kernel'\]",
    ),
    "wrong shape": (
        _put("params/txt/Encoder_0/encoderblock_1/MlpBlock_0/Dense_1/kernel", (57, 24)),
        r"params/txt/Encoder_0/encoderblock_1/MlpBlock_0/Dense_1/kernel: shape \(57, 24\), expected \(56, 24\)",
    ),
    "MAP head heads": (
        _put("params/img/MAPHead_0/MultiHeadDotProductAttention_0/key/kernel", (32, 2, 16)),
        r"params/img/MAPHead_0/MultiHeadDotProductAttention_0/key/kernel: shape \(32, 2, 16\), expected \(32, 4, 8\)",
    ),
    "non-square positions": (_put("params/img/pos_embedding", (1, 15, 32)), r"params/img/pos_embedding.*square"),
}


@pytest.mark.parametrize("case", MISFITS)
def test_misfit_names_the_key(case):
    edit, message = MISFITS[case]
    with pytest.raises(ConversionError, match=message):
        to_transformers(edit(tiny()))


def test_scanned_misfits_name_the_stored_key():
    arrays = LAYOUTS["scanned"](tiny())
    key = "params/img/Transformer/encoderblock/MlpBlock_0/Dense_1/bias"
    with pytest.raises(ConversionError, match=rf"missing keys: \['{key}'\]"):
        to_transformers({k: v for k, v in arrays.items() if k != key})
    with pytest.raises(ConversionError, match=rf"{key}: shape \(1, 32\), expected \(2, 32\)"):
        to_transformers({**arrays, key: arrays[key][:1]})


def test_text_without_head_gets_identity_head():
    """two_towers with text out_dim None (the released i18n So400m/16) has no `txt/head`: an identity head."""
    config, state = to_transformers({k: v for k, v in tiny().items() if not k.startswith("params/txt/head/")})
    assert config["text_config"]["projection_size"] == 24
    np.testing.assert_array_equal(state["text_model.head.weight"], np.eye(24, dtype=np.float32))
    np.testing.assert_array_equal(state["text_model.head.bias"], np.zeros(24, np.float32))


def test_bfloat16_arrays_stored_as_void():
    """big_vision saves bfloat16 arrays as 2-byte void; they come back as float32 of the same values."""
    arrays = tiny()
    bf16 = {k: (v.view(np.uint32) >> 16).astype(np.uint16).view("V2") for k, v in arrays.items()}
    rounded = {k: (v.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32) for k, v in arrays.items()}
    _, state = to_transformers(bf16)
    _, expected = to_transformers(rounded)
    for key, a in expected.items():
        assert state[key].dtype == np.float32, key
        np.testing.assert_array_equal(state[key], a, err_msg=key)


# --- End to end: the checkpoint through clip_jax's entry points (clip_jax.weights.sources) ----------------
# The references are transformers' SiglipModel on the same weights; float32 through different kernels: 1e-5 of
# the output's scale (the fixture agrees to ~3e-6 of it for images; big_vision's own flax model agrees as well).
TOLERANCE = 1e-5


def assert_close_to_scale(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=0, atol=TOLERANCE * float(np.abs(expected).max()))


@pytest.mark.parametrize("layout", ["per layer", "scanned"])
def test_load_embeds_as_siglip_model(tmp_path, layout):
    arrays = tiny() if layout == "per layer" else LAYOUTS["scanned"](tiny())
    np.savez(tmp_path / "siglip.npz", **arrays)
    clip = clip_jax.load(str(tmp_path / "siglip.npz"), dtype="float32")
    refs = _tiny()[1]
    assert_close_to_scale(clip.encode_image(refs["images"]), refs["image_embeds"])
    assert_close_to_scale(clip.encode_text(refs["tokens"]), refs["text_embeds"])
    with pytest.raises(ValueError, match="without a tokenizer"):
        clip.encode_text(["a photo of a cat"])


def test_import_weights_and_init_from(tmp_path):
    """import_weights --checkpoint X.npz (no --model: the shapes give it), then --config.init_from=X.npz."""
    np.savez(tmp_path / "siglip.npz", **tiny())
    import_weights.main(["--checkpoint", str(tmp_path / "siglip.npz"), "--output", str(tmp_path / "imported")])
    imported = clip_jax.load(str(tmp_path / "imported"), dtype="float32")
    refs = _tiny()[1]
    assert_close_to_scale(imported.encode_image(refs["images"]), refs["image_embeds"])
    _, metadata = read_weights(str(tmp_path / "imported"))
    assert metadata["origin"] == "big_vision" and metadata["tokenizer"] is None

    model = imported.model
    start = jax.jit(model.init)(jax.random.key(0), refs["images"][:1], refs["tokens"][:1])
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    state = {"params": nn.meta.unbox(start["params"]), "batch_stats": {}}
    state = load_into_state(str(tmp_path / "siglip.npz"), state, jax.tree.map(lambda _: device, state))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state["params"]), imported.variables["params"])


def test_an_npz_that_is_not_big_vision_says_what_it_needs(tmp_path):
    np.savez(tmp_path / "open_clip.npz", **{"visual.proj": np.zeros((2, 2), np.float32)})
    with pytest.raises(ConversionError, match="not a big_vision SigLIP checkpoint.*model=NAME"):
        clip_jax.load(str(tmp_path / "open_clip.npz"))
