"""Export to open_clip: the exact inverse of the import, open_clip's keys and shapes, the CLI's argument checks
(the CLI's round trip: integration/test_command_lines.py).

Fixtures: tests/fixtures/vit_small.npz, vit_small_laion.npz, rn_small_quickgelu.npz and
siglip_small.npz (open_clip
state dicts with perturbed random weights) and open_clip_state_dict_shapes.json
(open_clip's state dict shapes of every full-size architecture), all written
by tests/fixtures/make_open_clip_fixtures.py. The tests marked `open_clip` need
torch and open_clip in the environment (deselected by default):

    pytest -m open_clip tests/test_export.py
"""
import functools
import importlib.util
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import clip_jax
from clip_jax import export_weights
from clip_jax.weights.open_clip import from_torch_state_dict, open_clip_name, to_torch_state_dict
from clip_jax.weights.torch_layout import ConversionError
from clip_jax.weights.storage import save_variables

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
SMALL = ["vit_small", "vit_small_laion", "rn_small_quickgelu", "siglip_small"]
# float32 against open_clip in float32 (as tests/test_parity.py): the libraries' kernels sum in
# different orders through 2-12 layers, relative errors of a few float32 epsilons (1.2e-7) per
# layer; 1e-5 of the output scale leaves a margin over that, while any misplaced weight moves
# outputs by O(1) of their scale.
TOLERANCE = 1e-5


def load_fixture(name):
    """(open_clip state dict, reference inputs and outputs, clip_jax model spec) of a fixture."""
    with np.load(os.path.join(FIXTURES, f"{name}.npz")) as data:
        arrays = dict(data)
    ref = {k[2:]: arrays.pop(k) for k in list(arrays) if k.startswith("__")}
    return arrays, ref, json.loads(str(ref.pop("model")))


def init_inputs(model):
    """(images [1, H, W, 3], tokens [1, L]) of zeros for model.init."""
    size = model.visual.image_size
    return jnp.zeros((1, size, size, 3), jnp.float32), jnp.zeros((1, model.text.context_length), jnp.int32)


def random_variables(model, seed=0):
    """Random numpy variables of the model's shapes (jax.eval_shape, nothing compiled): round trips take any values."""
    shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), *init_inputs(model)))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(x.dtype), shapes)


def initial_variables(model, seed=0):
    """The model's initial variables as numpy, with the constant ones (biases, norms, BN statistics) randomised."""
    variables = nn.meta.unbox(model.init(jax.random.key(seed), *init_inputs(model)))
    rng = np.random.default_rng(seed)

    def perturb(path, x):
        x = np.asarray(x)
        if path[-1].key in ("bias", "mean"):
            return (0.1 * rng.standard_normal(x.shape)).astype(x.dtype)
        if path[-1].key in ("scale", "var"):
            return (rng.random(x.shape) + 0.5).astype(x.dtype)
        return x

    return jax.tree_util.tree_map_with_path(perturb, variables)


def assert_bit_equal(actual, expected):
    """Same tree, and every leaf has the same dtype, shape and bytes."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(expected)):
        a, b = np.asarray(a), np.asarray(b)
        assert (a.dtype, a.shape) == (b.dtype, b.shape), jax.tree_util.keystr(path)
        assert a.tobytes() == b.tobytes(), jax.tree_util.keystr(path)


def assert_state_dicts_bit_equal(actual, expected):
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        assert (actual[key].dtype, actual[key].shape) == (value.dtype, value.shape), key
        assert actual[key].tobytes() == value.tobytes(), key


@pytest.mark.parametrize("scan_layers", [False, True])
@pytest.mark.parametrize("name", SMALL)
def test_state_dict_import_export_is_bit_exact(name, scan_layers):
    # The fixtures hold open_clip's whole state dict: every BatchNorm's num_batches_tracked
    # (int64 0, as exported) and no attention mask (open_clip's is not persistent).
    state_dict, _, spec = load_fixture(name)
    model = clip_jax.create_model(spec["name"], **spec["overrides"], scan_layers=scan_layers)
    exported = to_torch_state_dict(from_torch_state_dict(state_dict, model), model)
    assert_state_dicts_bit_equal(exported, state_dict)


@pytest.mark.parametrize("scan_layers", [False, True])
@pytest.mark.parametrize("name", SMALL)
def test_variables_export_import_is_bit_exact(name, scan_layers):
    _, _, spec = load_fixture(name)
    model = clip_jax.create_model(spec["name"], **spec["overrides"], scan_layers=scan_layers)
    variables = random_variables(model)
    assert_bit_equal(from_torch_state_dict(to_torch_state_dict(variables, model), model), variables)


def test_scanned_and_plain_layouts_export_alike():
    _, _, spec = load_fixture("vit_small")
    scanned = clip_jax.create_model(spec["name"], **spec["overrides"], scan_layers=True)
    plain = clip_jax.create_model(spec["name"], **spec["overrides"])
    variables = random_variables(scanned)
    assert_state_dicts_bit_equal(to_torch_state_dict(variables, plain), to_torch_state_dict(variables, scanned))


def test_dtype_float32_by_default_or_as_asked():
    _, _, spec = load_fixture("vit_small")
    model = clip_jax.create_model(spec["name"], **spec["overrides"])
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), random_variables(model))
    exported = to_torch_state_dict(bf16, model)
    assert {v.dtype for v in exported.values()} == {np.dtype(np.float32)}
    assert_bit_equal(from_torch_state_dict(exported, model), jax.tree.map(lambda x: x.astype(np.float32), bf16))
    assert {v.dtype for v in to_torch_state_dict(bf16, model, dtype=None).values()} == {jnp.dtype(jnp.bfloat16)}
    assert {v.dtype for v in to_torch_state_dict(bf16, model, dtype=np.float16).values()} == {np.dtype(np.float16)}


def test_training_only_heads_are_left_out_with_a_warning():
    _, _, spec = load_fixture("rn_small_quickgelu")
    plain = clip_jax.create_model(spec["name"], **spec["overrides"])
    overrides = {**spec["overrides"], "text": {**spec["overrides"]["text"], "vocab_size": 513}}
    trained = clip_jax.create_model(spec["name"], **overrides, critic_dim=16, declip_projection_dim=16)
    variables = random_variables(trained)
    variables["params"]["heads"] = {"vocabulary": {"kernel": np.zeros((64, 513), np.float32)}}  # as DeCLIP inits them
    with pytest.warns(UserWarning, match=r"heads, image_critic, text_critic, .*mask token.*before the critic heads"):
        exported = to_torch_state_dict(variables, trained)
    # Key for key the state dict of the model without the heads (its vocabulary one row shorter).
    assert_state_dicts_bit_equal(to_torch_state_dict(from_torch_state_dict(exported, plain), plain), exported)
    # The vocabulary loses DeCLIP's mask-token row (the last) and nothing else.
    token_embedding = variables["params"]["text"]["token_embedding"]["embedding"]
    np.testing.assert_array_equal(exported["token_embedding.weight"], token_embedding[:-1])
    assert open_clip_name("RN50", {"text": {"vocab_size": 49409}, "declip_projection_dim": 1024}) == "RN50"
    assert open_clip_name("ViT-B-32", {"critic_dim": 2048, "scan_layers": True, "dtype": "bfloat16"}) == "ViT-B-32"


def test_variables_that_do_not_fit_are_named():
    _, _, spec = load_fixture("vit_small")
    model = clip_jax.create_model(spec["name"], **spec["overrides"])
    variables = random_variables(model)
    del variables["params"]["visual"]["ln_post"]
    variables["params"]["text"]["text_projection"] = np.zeros((5, 5), np.float32)
    with pytest.raises(ConversionError) as error:
        to_torch_state_dict(variables, model)
    assert "params/visual/ln_post/scale" in str(error.value) and "missing" in str(error.value)
    assert "params/text/text_projection: shape (5, 5)" in str(error.value)


def test_open_clip_names():
    assert open_clip_name("ViT-B-32") == "ViT-B-32"
    assert open_clip_name("ViT-B-32", {"activation": "quick_gelu"}) == "ViT-B-32-quickgelu"
    assert open_clip_name("RN50-quickgelu") == "RN50-quickgelu"
    assert open_clip_name("ViT-Tiny-8") is None  # small test sizes: open_clip has no such name
    assert open_clip_name("ViT-B-32", {"vision": {"layers": 6}}) is None
    assert open_clip_name("ViT-B-32", {"init_logit_bias": -10.0}) == "ViT-B-32"  # + init_logit_bias= in open_clip


def test_full_size_keys_and_shapes_match_open_clip():
    with open(os.path.join(FIXTURES, "open_clip_state_dict_shapes.json")) as f:
        reference = json.load(f)  # '-quickgelu' twins left out: their state dicts are the same
    # a '-quickgelu' twin differs only in its activation, which changes no tensor: checked once, as its base
    names = [name for name in clip_jax.list_models() if open_clip_name(name) and not name.endswith("-quickgelu")]
    assert {open_clip_name(name) for name in names} == set(reference)
    for name in names:
        # layers scanned: one block traced per stack, not up to 48; the export unstacks them into the plain
        # layout's keys (test_scanned_and_plain_layouts_export_alike)
        model = clip_jax.create_model(name, scan_layers=True)
        variables = jax.eval_shape(model.init, jax.random.key(0), *init_inputs(model))
        exported = jax.eval_shape(functools.partial(to_torch_state_dict, model=model), variables)
        shapes = {k: list(v.shape) for k, v in exported.items()}
        assert shapes == reference[open_clip_name(name).removesuffix("-quickgelu")], name


def save_weights(directory, name, scan_layers):
    """Writes a fixture model's random variables as a weights directory; returns them."""
    _, _, spec = load_fixture(name)
    overrides = {**spec["overrides"], "scan_layers": scan_layers}
    variables = random_variables(clip_jax.create_model(spec["name"], **overrides))
    save_variables(directory, variables, {"model": spec["name"], "overrides": overrides})
    return variables, spec


def test_command_line_names_bad_arguments(tmp_path, capsys):
    save_weights(tmp_path / "weights", "vit_small", False)
    with pytest.raises(SystemExit):
        export_weights.main([str(tmp_path / "weights"), str(tmp_path / "out.bin")])
    assert "out.bin" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        export_weights.main([str(tmp_path / "nowhere"), str(tmp_path / "out.safetensors")])
    assert "nowhere" in capsys.readouterr().err


# --- With torch and open_clip installed: pytest -m open_clip tests/test_export.py --------------------


@pytest.fixture(scope="module")
def open_clip_fixtures():
    """tests/fixtures/make_open_clip_fixtures.py as a module (it imports torch and open_clip)."""
    path = os.path.join(FIXTURES, "make_open_clip_fixtures.py")
    spec = importlib.util.spec_from_file_location("make_open_clip_fixtures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def relative_error(actual, expected):
    """max |actual - expected| over the output scale max(1, max |expected|), as tests/test_parity.py."""
    return float(np.abs(np.asarray(actual) - expected).max() / max(1.0, np.abs(expected).max()))


@pytest.mark.open_clip
@pytest.mark.parametrize("name", [*SMALL, "ViT-B-32", "RN50", "ViT-SO400M-14-SigLIP"])
def test_exported_model_matches_open_clip(name, open_clip_fixtures):
    import open_clip
    import torch

    if name in SMALL:
        spec = open_clip_fixtures.SMALL[name]
        model = clip_jax.create_model(spec["clip_jax"]["name"], **spec["clip_jax"]["overrides"])
        torch_model = open_clip_fixtures.small_model(spec)
    else:
        model = clip_jax.create_model(name)
        torch_model = open_clip.create_model(open_clip_name(name), pretrained=None)
    variables = initial_variables(model, seed=1)
    state_dict = {k: torch.from_numpy(v) for k, v in to_torch_state_dict(variables, model).items()}
    torch_model.load_state_dict(state_dict, strict=True)
    torch_model.eval()
    rng = np.random.default_rng(1)
    size, context = model.visual.image_size, model.text.context_length
    images = rng.standard_normal((2, size, size, 3)).astype(np.float32)
    tokens = open_clip_fixtures.random_tokens(2, context, model.text.vocab_size, rng)
    with torch.no_grad():
        torch_images = torch_model.encode_image(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
        torch_texts = torch_model.encode_text(torch.from_numpy(tokens)).numpy()
    image_error = relative_error(model.apply(variables, images, method=model.encode_image), torch_images)
    text_error = relative_error(model.apply(variables, tokens.astype(np.int32), method=model.encode_text), torch_texts)
    print(f"{name}: max |diff| / output scale: image {image_error:.2e}, text {text_error:.2e}")
    assert image_error <= TOLERANCE and text_error <= TOLERANCE


@pytest.mark.open_clip
@pytest.mark.parametrize("suffix", export_weights.FORMATS)
def test_exported_files_load_strictly_into_open_clip(tmp_path, suffix, open_clip_fixtures):
    import open_clip
    import safetensors.torch
    import torch

    variables, spec = save_weights(tmp_path / "weights", "rn_small_quickgelu", scan_layers=True)
    output = str(tmp_path / f"exported{suffix}")
    export_weights.main([str(tmp_path / "weights"), output])
    loaders = {
        ".safetensors": safetensors.torch.load_file,
        ".pt": torch.load,
        ".npz": lambda path: {k: torch.from_numpy(v) for k, v in np.load(path).items()},
    }
    torch_model = open_clip.model.CLIP(**open_clip_fixtures.SMALL["rn_small_quickgelu"]["open_clip"])
    torch_model.load_state_dict(loaders[suffix](output), strict=True)
    model = clip_jax.create_model(spec["name"], **spec["overrides"])
    loaded = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    assert_state_dicts_bit_equal(loaded, to_torch_state_dict(variables, model))
