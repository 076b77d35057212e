"""LiMBeR (config.loss="limber") and its caption LM (config.loss="causal_lm"): prefixes, sharded steps,
validation (runs through `python -m clip_jax.main`: integration/test_limber_runs.py)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import linen as nn
from test_train_step import (
    MOMENT_TOL, assert_metrics_close, assert_params_close_after_adam, run_steps, small_config,
)

import clip_jax
from clip_jax.config import default_config
from clip_jax.config.validation import validate
from clip_jax.models import limber
from clip_jax.training.objectives import Limber, objective_class

# A one-layer GPT-J-layout LM (rotary positions) of width 32 with a tied head: most of its 1.6M
# parameters are the CLIP BPE vocabulary's embeddings.
LM = dict(width=32, heads=2, layers=1, mlp_dim=64, tie_embeddings=True, head_bias=False, max_positions=128)

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]  # shapes.classnames("color")
CAPTIONING = dict(type="captioning", data="shapes:val#size=32&n=24&label=color", classnames=COLOURS, every_steps=30)


@pytest.mark.parametrize(
    "image_model,prefix,cells,channels",
    [("ViT-Tiny-8", "grid", 16, 128), ("ViT-Tiny-8", "pooled", 3, 128),
     ("RN-Tiny", "grid", 4, 512), ("RN-Tiny", "pooled", 3, 128)],
)
def test_prefix_shapes(image_model, prefix, cells, channels):
    """grid: one vector per cell (ViT-Tiny-8: 4 x 4 patches of width 128; RN-Tiny at 64 px: a 2 x 2 map of
    32 x 16 channels); pooled: num_prompts vectors from the embedding (128). Each of the LM's width."""
    model = limber.create_limber(image_model, "gpt2-tiny", prefix=prefix, num_prompts=3 if prefix == "pooled" else 0)
    size = model.visual.image_size
    images, tokens = jnp.zeros((2, size, size, 3)), jnp.zeros((2, 8), jnp.int32)
    variables = jax.eval_shape(model.init, jax.random.key(0), images, tokens)
    assert model.prefix_length == cells
    assert jax.eval_shape(lambda v: model.apply(v, images, method=model.prefix), variables).shape == (2, cells, 64)
    assert nn.meta.unbox(variables["params"]["projection"]["kernel"]).shape == (channels, 64 * (3 if prefix == "pooled" else 1))
    clip = clip_jax.create_model(image_model)  # the tower's tree is a whole CLIP image tower's (loadable)
    clip_tree = jax.eval_shape(clip.init, jax.random.key(0), images, tokens)["params"]["visual"]
    assert jax.tree.structure(nn.meta.unbox(variables["params"]["visual"])) == jax.tree.structure(nn.meta.unbox(clip_tree))
    assert jax.eval_shape(model.apply, variables, images, tokens).shape == (2, 7, 128)  # gpt2-tiny's vocabulary


def test_rn50x16_grid_is_the_papers():
    """RN50x16 at 384 px: the 12 x 12 x 3072 map before attention pooling, k = 144 as in the paper; the ViT's
    grid is its patch tokens (the class token dropped)."""
    visual = clip_jax.create_model("RN50x16").visual
    images = jax.ShapeDtypeStruct((1, 384, 384, 3), jnp.float32)
    variables = jax.eval_shape(visual.init, jax.random.key(0), images)
    assert jax.eval_shape(lambda v, x: visual.apply(v, x, grid=True), variables, images).shape == (1, 12, 12, 3072)
    assert limber.grid_cells(visual) == 144
    vit = clip_jax.create_model("ViT-B-32").visual
    images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    variables = jax.eval_shape(vit.init, jax.random.key(0), images)
    assert jax.eval_shape(lambda v, x: vit.apply(v, x, grid=True), variables, images).shape == (1, 49, 768)


def step_config(loss):
    """test_train_step's small config (batch 16, tokens of 77) for a caption objective."""
    config = small_config(loss=loss)
    config.lm.name = "gpt-j-tiny"
    config.lm.overrides = ml_collections.ConfigDict(LM)
    config.model_overrides = ml_collections.ConfigDict({"vision": {"layers": 1}})
    return config


def assert_same_caption_training(run, reference, config):
    """Two steps of `run` against `reference` (test_train_step's bounds): Adam's moments of the trained
    parameters within MOMENT_TOL of their largest entry, metrics to rounding, parameters within what rounding
    can do to Adam's update; frozen parts (LiMBeR's towers) bit for bit."""
    (states, metrics, _), (want_states, want_metrics, _) = run, reference
    for got, want in zip(states, want_states, strict=True):
        moments = {}
        for tree, key in ((got, "got"), (want, "want")):
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree["opt_state"]):
                name = jax.tree_util.keystr(path)
                if ".mu" in name or ".nu" in name:
                    moments.setdefault(name, {})[key] = np.asarray(leaf)
        assert moments
        for kind in (".mu", ".nu"):
            group = {k: v for k, v in moments.items() if kind in k}
            atol = MOMENT_TOL * max(float(np.abs(v["want"]).max()) for v in group.values())
            for name, v in group.items():
                np.testing.assert_allclose(v["got"], v["want"], rtol=0, atol=atol, err_msg=name)
        for frozen in objective_class(config).locked_towers(config):
            jax.tree.map(np.testing.assert_array_equal, got["params"][frozen], want["params"][frozen])
    assert_metrics_close(metrics, want_metrics, [s["params"] for s in states], [s["params"] for s in want_states])
    assert_params_close_after_adam(states[-1]["params"], want_states[-1]["params"], config, step=2)


@pytest.mark.parametrize("loss", ["causal_lm", "limber"])
def test_sharded_caption_step_equals_single_device(loss):
    """data=8 and data=2 x fsdp=4 against one device: the psum'd token sums give the global mean."""
    config = step_config(loss)
    reference = run_steps(config, {"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    assert {"token_accuracy", "tokens"} <= set(reference[1][0]) and "logit_scale" not in reference[1][0]
    for mesh in ({"data": 8, "fsdp": 1, "tensor": 1}, {"data": 2, "fsdp": 4, "tensor": 1}):
        assert_same_caption_training(run_steps(config, mesh, jax.devices()), reference, config)


@pytest.mark.parametrize(
    "changes,field",
    [
        ({"limber.prefix": "patches"}, "config.limber.prefix"),
        ({"limber.prefix": "pooled"}, "config.limber.num_prompts"),
        ({"limber.image_from": ""}, "config.limber.image_from"),
        ({"limber.lm_from": ""}, "config.limber.lm_from"),
        ({"lm.name": "gpt-5"}, "config.lm.name"),
        ({"data.tokenizer": "sentencepiece:/x.model"}, "config.data.tokenizer"),
        ({"lit.lock_image": True}, "config.lit"),
        ({"init_from": "/w"}, "config.init_from"),
        ({"data.chain_captions": True}, "config.data.chain_captions"),  # LiMBeR reads one caption per image
        ({"evals.x": ml_collections.ConfigDict(dict(type="zeroshot", data="shapes", every_steps=1))}, "config.evals.x.type"),
        ({"loss": "causal_lm", "evals.x": ml_collections.ConfigDict(dict(CAPTIONING, type="captioning"))}, "config.evals"),
    ],
)
def test_validation_names_the_field(changes, field):
    config = default_config()
    config.loss = "limber"
    config.limber.update(image_from="/clip", lm_from="/lm")
    validate(config)
    for key, value in changes.items():
        section, _, name = key.rpartition(".")
        (config[section] if section else config)[name] = value
    with pytest.raises(ValueError, match=field):
        validate(config)


def test_context_length_must_fit_learned_positions():
    """gpt2-tiny has 32 learned positions: 16 grid vectors + 23 caption tokens (39) do not fit; the error names the field."""
    from clip_jax.config import ConfigError
    from clip_jax.training.objectives import model_from_config

    config = default_config()
    config.loss, config.model, config.data.context_length = "limber", "ViT-Tiny-8", 24
    config.limber.update(image_from="/clip", lm_from="/lm")
    model, _ = model_from_config(config)
    with pytest.raises(ConfigError, match="config.data.context_length: .* 39 positions, but has 32"):
        Limber.check_model(model, config)
    config.limber.num_prompts = 5
    with pytest.raises(ConfigError, match="config.limber.num_prompts"):
        Limber.check_model(model, config)


def test_papers_setup_shards_gpt_j_6b_over_fsdp():
    """The paper's largest setup, RN50x16 grid features into GPT-J-6B, placed on a mesh of fsdp=8: every
    frozen LM matrix of 1M entries or more is split 8 ways, so each device holds about 1/8 of the LM's 6.05B
    parameters (shapes only: nothing is allocated)."""
    from clip_jax.runtime import sharding

    model = limber.create_limber("RN50x16", "gpt-j-6b", prefix="grid")
    images, tokens = jnp.zeros((1, 384, 384, 3)), jnp.zeros((1, 16), jnp.int32)
    boxed = jax.eval_shape(model.init, jax.random.key(0), images, tokens)["params"]
    mesh = sharding.make_mesh({"data": 1, "fsdp": 8, "tensor": 1})
    shardings = sharding.logical_shardings(boxed, mesh)
    shapes = nn.meta.unbox(boxed)
    lm_entries = sum(x.size for x in jax.tree.leaves(shapes["text"]))
    assert lm_entries == 6_050_882_784  # gpt-j-6b, Hugging Face's count
    per_device = 0
    for path, x in jax.tree_util.tree_leaves_with_path(shapes["text"]):
        placed = shardings["text"]
        for key in path:
            placed = placed[key.key]
        shard = placed.shard_shape(x.shape)
        per_device += int(np.prod(shard))
        if x.size >= 1 << 20:
            assert "fsdp" in placed.spec, (jax.tree_util.keystr(path), placed.spec)
    assert per_device <= lm_entries / 8 * 1.001, per_device / lm_entries
    assert limber.grid_cells(model.visual) == 144 and shapes["projection"]["kernel"].shape == (3072, 4096)
