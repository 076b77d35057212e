"""Model zoo: names, parameter counts, logical axes, dtype and remat/scan variants."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import clip_jax
from clip_jax.weights.torch_layout import stack_layers, unstack_layers

# Parameter counts of open_clip's models (sum of numel over model.parameters()).
OPEN_CLIP_PARAMETER_COUNTS = {
    "RN50": 102_007_137,
    "RN101": 119_688_033,
    "RN50x4": 178_300_601,
    "RN50x16": 290_979_217,
    "RN50x64": 623_258_305,
    "ViT-B-32": 151_277_313,
    "ViT-B-16": 149_620_737,
    "ViT-L-14": 427_616_513,
    "ViT-L-14-336": 427_944_193,
    "ViT-H-14": 986_109_441,
    "ViT-g-14": 1_366_678_273,
    "ViT-bigG-14": 2_539_567_105,
    "ViT-SO400M-14-SigLIP": 877_360_306,
}
OPENAI = ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336")


def init_shapes(model):
    size = model.visual.image_size
    return jax.eval_shape(
        model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)), jnp.zeros((1, model.text.context_length), jnp.int32)
    )


def test_list_models_has_every_openai_architecture_in_both_activations():
    names = clip_jax.list_models()
    for name in OPENAI:
        assert name in names and f"{name}-quickgelu" in names
        assert clip_jax.create_model(name).text.activation == "gelu"
        assert clip_jax.create_model(f"{name}-quickgelu").text.activation == "quick_gelu"


@pytest.mark.parametrize("name", sorted(OPEN_CLIP_PARAMETER_COUNTS))
def test_parameter_count_equals_open_clip(name):
    shapes = init_shapes(clip_jax.create_model(name))
    count = sum(x.size for x in jax.tree.leaves(nn.meta.unbox(shapes["params"])))
    assert count == OPEN_CLIP_PARAMETER_COUNTS[name]
    assert ("batch_stats" in shapes) == name.startswith("RN")


def test_parameters_carry_logical_axis_names():
    shapes = init_shapes(clip_jax.create_model("ViT-Tiny-8", scan_layers=True))
    specs = nn.get_partition_spec(shapes["params"])
    text = specs["text"]
    assert tuple(text["token_embedding"]["embedding"]) == ("vocab", "embed")
    assert tuple(text["transformer"]["resblocks"]["mlp"]["c_fc"]["kernel"]) == ("layers", "embed", "mlp")
    assert tuple(text["transformer"]["resblocks"]["attn"]["query"]["kernel"]) == ("layers", "embed", "heads", "kv")
    for leaf in jax.tree.leaves(shapes["params"], is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)):
        assert isinstance(leaf, nn.LogicallyPartitioned)


def test_unknown_names_and_overrides_are_named_in_errors():
    with pytest.raises(ValueError, match="ViT-X-99"):
        clip_jax.create_model("ViT-X-99")
    with pytest.raises(ValueError, match="widht"):
        clip_jax.create_model("ViT-B-32", vision={"widht": 10})
    with pytest.raises(ValueError, match="remat"):
        clip_jax.create_model("ViT-B-32", remat=True)


def test_siglip_towers_name_the_fields_that_do_not_fit():
    with pytest.raises(ValueError, match="pool='token' pools the class token"):
        init_shapes(clip_jax.create_model("ViT-B-32", vision={"class_token": False}))
    with pytest.raises(ValueError, match=r"output_dim \(512\) must equal the width \(1152\)"):
        init_shapes(clip_jax.create_model("ViT-SO400M-14-SigLIP", embed_dim=512))
    with pytest.raises(ValueError, match="pool_type must be one of"):
        init_shapes(clip_jax.create_model("ViT-SO400M-14-SigLIP", text={"pool_type": "first"}))


def test_override_builds_requested_tower():
    model = clip_jax.create_model("ViT-Tiny-8", embed_dim=16, text={"vocab_size": 1000, "context_length": 32})
    shapes = jax.eval_shape(
        model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 32), jnp.int32)
    )
    params = nn.meta.unbox(shapes["params"])
    assert params["text"]["token_embedding"]["embedding"].shape == (1000, 128)
    assert params["text"]["text_projection"].shape == (128, 16)


def small_inputs(model, batch=2):
    size = model.visual.image_size
    images = jax.random.normal(jax.random.key(1), (batch, size, size, 3))
    tokens = jax.random.randint(jax.random.key(2), (batch, 77), 1, 49406).at[:, 10].set(49407)
    return images, tokens


@functools.cache
def initial_variables(name: str) -> dict:
    """`name`'s initial variables (key 0), compiled once for the tests of this file: initialised op by op, the
    ResNet's initializers compile some 280 small programs (15 s on 2 cores)."""
    model = clip_jax.create_model(name)
    return jax.jit(model.init)(jax.random.key(0), *small_inputs(model))


@pytest.mark.parametrize("name", ["ViT-Tiny-8", "RN-Tiny"])
def test_outputs_are_normalized_embeddings_and_scale(name):
    model = clip_jax.create_model(name)
    images, tokens = small_inputs(model)
    variables = initial_variables(name)
    out = jax.jit(model.apply)(variables, images, tokens)  # compiled once: op by op takes 10-20 s
    assert out["image_embeds"].shape == out["text_embeds"].shape == (2, 128)
    # a float32 rsqrt and a sum of 128 squares: a few ulps of 1
    np.testing.assert_allclose(jnp.linalg.norm(out["image_embeds"], axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(jnp.linalg.norm(out["text_embeds"], axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out["logit_scale"], 1 / 0.07, rtol=1e-5)
    assert "logit_bias" not in out
    raw = jax.jit(functools.partial(model.apply, method=model.encode_image))(variables, images)
    np.testing.assert_allclose(raw / jnp.linalg.norm(raw, axis=-1, keepdims=True), out["image_embeds"], atol=1e-6)


def test_logit_bias_only_where_configured():
    model = clip_jax.create_model("ViT-Tiny-8", init_logit_scale=np.log(10.0), init_logit_bias=-10.0)
    images, tokens = small_inputs(model)
    out = model.apply(model.init(jax.random.key(0), images, tokens), images, tokens)
    np.testing.assert_allclose(out["logit_scale"], 10.0, rtol=1e-6)
    assert float(out["logit_bias"]) == -10.0


def test_resnet_train_mode_updates_batch_stats():
    model = clip_jax.create_model("RN-Tiny")
    images, tokens = small_inputs(model)
    variables = initial_variables("RN-Tiny")
    train = functools.partial(model.apply, train=True, mutable=["batch_stats"])
    _, updates = jax.jit(train)(variables, images, tokens)
    before = jax.tree.leaves(variables["batch_stats"])
    after = jax.tree.leaves(updates["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after))


def test_text_tower_initialisation_follows_openai():
    model = clip_jax.create_model("ViT-B-32")
    tokens = jnp.zeros((1, 77), jnp.int32)
    text_vars = jax.jit(model.text.init)(jax.random.key(0), tokens)
    params = nn.meta.unbox(text_vars["params"])
    width, layers = 512, 12
    block = params["transformer"]["resblocks_0"]
    expected = {
        "token_embedding": (params["token_embedding"]["embedding"], 0.02),
        "positional": (params["positional_embedding"], 0.01),
        "in_proj": (block["attn"]["query"]["kernel"], width**-0.5),
        "out_proj": (block["attn"]["out"]["kernel"], width**-0.5 * (2 * layers) ** -0.5),
        "c_fc": (block["mlp"]["c_fc"]["kernel"], (2 * width) ** -0.5),
        "c_proj": (block["mlp"]["c_proj"]["kernel"], width**-0.5 * (2 * layers) ** -0.5),
        "text_projection": (params["text_projection"], width**-0.5),
    }
    for what, (value, std) in expected.items():
        assert abs(float(jnp.std(value)) / std - 1) < 0.05, what


def test_resnet_bn3_gamma_starts_at_zero():
    params = nn.meta.unbox(initial_variables("RN-Tiny")["params"])["visual"]
    assert np.all(params["layer1_0"]["bn3"]["scale"] == 0)
    assert np.all(params["bn3"]["scale"] == 1)  # the stem's bn3 is not a residual branch


def contrastive_proxy(model, params, images, tokens):
    out = model.apply({"params": params}, images, tokens)
    return jnp.sum(out["logit_scale"] * out["image_embeds"] @ out["text_embeds"].T)


@functools.cache
def plain_reference() -> tuple:
    """ViT-Tiny-8's inputs, parameters, outputs and contrastive_proxy gradient, compiled as in training."""
    plain = clip_jax.create_model("ViT-Tiny-8")
    images, tokens = small_inputs(plain)
    params = nn.meta.unbox(initial_variables("ViT-Tiny-8")["params"])
    out = jax.jit(plain.apply)({"params": params}, images, tokens)
    grad = jax.jit(jax.grad(contrastive_proxy, argnums=1), static_argnums=0)(plain, params, images, tokens)
    return images, tokens, params, out, grad


@pytest.mark.parametrize("remat_policy", ["none", "full", "dots"])
def test_remat_and_scan_variants_equal_plain_model(remat_policy):
    """Compiled as in training, every variant gives bit-identical outputs; gradients agree to
    float32 rounding (the recomputed backward pass fuses differently): 1e-6 of the largest entry."""
    images, tokens, params, expected_out, expected_grad = plain_reference()
    for scan in (False, True):
        model = clip_jax.create_model("ViT-Tiny-8", remat_policy=remat_policy, scan_layers=scan)
        variant_params = stack_layers(params) if scan else params
        out = jax.jit(model.apply)({"params": variant_params}, images, tokens)
        jax.tree.map(np.testing.assert_array_equal, out, expected_out)
        grad = jax.jit(jax.grad(contrastive_proxy, argnums=1), static_argnums=0)(model, variant_params, images, tokens)
        tolerance = 1e-6 * max(float(jnp.abs(g).max()) for g in jax.tree.leaves(expected_grad))
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=tolerance),
            unstack_layers(grad) if scan else grad,
            expected_grad,
        )


def test_scan_init_is_stacked_version_of_plain_layout():
    shapes = init_shapes(clip_jax.create_model("ViT-Tiny-8", scan_layers=True))
    params = nn.meta.unbox(shapes["params"])
    assert params["visual"]["transformer"]["resblocks"]["mlp"]["c_fc"]["kernel"].shape == (4, 128, 512)
    plain = nn.meta.unbox(init_shapes(clip_jax.create_model("ViT-Tiny-8"))["params"])
    assert jax.tree.structure(unstack_layers(params)) == jax.tree.structure(plain)


@pytest.mark.parametrize("name", ["ViT-Tiny-8", "RN-Tiny"])
def test_bfloat16_compute_stays_close_to_float32(name):
    """bf16 has 8 mantissa bits: embeddings agree to a cosine similarity of 0.999."""
    model = clip_jax.create_model(name)
    images, tokens = small_inputs(model, batch=4)
    variables = initial_variables(name)
    reference = jax.jit(model.apply)(variables, images, tokens)
    low = clip_jax.create_model(name, dtype=jnp.bfloat16)
    out = jax.jit(low.apply)(variables, images, tokens)
    assert jax.tree.map(lambda x: x.dtype, nn.meta.unbox(variables["params"])) == jax.tree.map(
        lambda x: jnp.dtype(jnp.float32), nn.meta.unbox(variables["params"])
    )
    for key in ("image_embeds", "text_embeds"):
        assert out[key].dtype == jnp.float32
        cosine = jnp.sum(out[key] * reference[key], axis=-1)
        assert float(cosine.min()) > 0.999, (key, cosine)
        assert float(jnp.abs(out[key] - reference[key]).max()) < 0.05
