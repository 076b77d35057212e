"""FLIP: random patch masking of the ViT in training, unmasked evaluation and unmasked tuning (runs through
`python -m clip_jax.main`: integration/test_flip_runs.py)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import clip_jax
from clip_jax.config import default_config
from clip_jax.config.validation import validate
from clip_jax.models.layers import Transformer
from clip_jax.models.vit import VisionTransformer, gather_patch_tokens, num_kept_patches, random_patch_subset
from clip_jax.runtime import sharding
from clip_jax.training import train_step
from clip_jax.training.objectives import flip, make_objective
from clip_jax.weights.torch_layout import stack_layers

BATCH = 8
SMALL = dict(embed_dim=32, vision=dict(width=64, layers=1, head_width=32), text=dict(width=64, heads=2, layers=1))
# SigLIP's image tower (ViT-SO400M-14-SigLIP's structure) at the same size: no class token, MAP pooling.
SIGLIP_VISION = dict(width=64, layers=1, head_width=32, class_token=False, pre_norm=False, patch_bias=True, pool="map")


def small_model(pool="token", **overrides):
    """ViT-Tiny-8 cut down: 32 px images in 16 patches of 8 px, one block per tower; pool='map': SigLIP's tower."""
    base = SMALL if pool == "token" else {**SMALL, "embed_dim": 64, "vision": SIGLIP_VISION}
    return clip_jax.create_model("ViT-Tiny-8", **{**base, **overrides})


def inputs(model, batch=BATCH, seed=1):
    size = model.visual.image_size
    images = jax.random.normal(jax.random.key(seed), (batch, size, size, 3))
    tokens = jax.random.randint(jax.random.key(seed + 1), (batch, 77), 1, 49406).at[:, 10].set(49407)
    return images, tokens


def gather_before_blocks(keep):
    """An interceptor: the image tower's blocks get only the class token (if any) and the `keep` [B, K] patch tokens.

    The plain model under it is the reference for masking: it gathers after ln_pre, the masked model before.
    """

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name == "__call__" and isinstance(module, Transformer):
            if isinstance(module.parent, VisionTransformer):
                args = (gather_patch_tokens(args[0], keep, int(module.parent.class_token)), *args[1:])
        return next_fun(*args, **kwargs)

    return interceptor


@pytest.mark.parametrize("ratio,kept", [(0.5, 8), (0.75, 4), (0.3, 11), (0.0, 16)])
def test_subsets_keep_round_fraction_of_distinct_patches_per_example(ratio, kept):
    keep = np.asarray(random_patch_subset(jax.random.key(0), 64, 16, ratio))
    assert keep.shape == (64, kept) == (64, num_kept_patches(16, ratio)) and keep.dtype == np.int32
    assert (np.diff(keep, axis=1) > 0).all() and keep.min() >= 0 and keep.max() < 16  # distinct, ascending
    if 0 < kept < 16:
        assert len({tuple(row) for row in keep}) > 32  # examples draw their own subsets
        counts = np.bincount(keep.ravel(), minlength=16)
        assert counts.min() > 0  # every patch position gets kept somewhere


def test_subsets_are_a_function_of_seed_and_step():
    model = small_model()

    def draw(seed, step):
        return np.asarray(flip.kept_patches(model, seed, jnp.int32(step), BATCH, 0.5))

    np.testing.assert_array_equal(draw(0, 7), draw(0, 7))
    assert not np.array_equal(draw(0, 7), draw(0, 8))
    assert not np.array_equal(draw(0, 7), draw(1, 7))


def test_a_ratio_keeping_no_patch_is_refused():
    with pytest.raises(ValueError, match="keep at least one"):
        num_kept_patches(16, 0.99)


def test_unmasked_tuning_is_the_last_steps():
    config = default_config()
    config.total_steps, config.flip.mask_ratio, config.flip.unmasked_steps = 20, 0.5, 5
    assert [flip.mask_ratio_at(config, s) for s in range(20)] == [0.5] * 15 + [0.0] * 5
    # One compiled step per ratio the run still meets, in order, so the loop never compiles.
    assert [flip.mask_ratios_from(config, start) for start in (0, 14, 15, 20)] == [(0.5, 0.0), (0.5, 0.0), (0.0,), (0.0,)]
    config.flip.unmasked_steps = 0
    assert {flip.mask_ratio_at(config, s) for s in range(20)} == {0.5}
    assert flip.mask_ratios_from(config, 0) == (0.5,)
    config.flip.mask_ratio = 0.0
    assert flip.mask_ratios_from(config, 0) == (0.0,)


def test_unmasked_model_is_the_plain_program():
    """Without keep_patches the image tower traces to the plain ViT (no gather), so evaluation and
    users see bit-identical outputs; keeping every patch in order gives the same numbers too."""
    model = small_model()
    images, tokens = inputs(model)
    variables = model.init(jax.random.key(0), images, tokens)
    encode = jax.jit(lambda v, x, keep=None: model.apply(v, x, keep_patches=keep, method=model.encode_image))
    assert "gather" not in str(jax.make_jaxpr(encode)(variables, images))
    every_patch = jnp.broadcast_to(jnp.arange(16, dtype=jnp.int32), (BATCH, 16))
    np.testing.assert_array_equal(encode(variables, images, every_patch), encode(variables, images))


@pytest.mark.parametrize(
    "remat_policy,scan,pool", [("none", False, "token"), ("full", True, "token"), ("dots", False, "token"), ("none", False, "map")]
)
def test_masked_tower_runs_the_blocks_on_the_kept_tokens(remat_policy, scan, pool):
    """Masked outputs equal the plain model's with the kept tokens gathered in front of the blocks,
    for the remat/scan variants and SigLIP's tower (no class token: only patch tokens) too;
    differences are float32 rounding (ln_pre runs on [B, 1 + K, D] instead of [B, 1 + N, D]):
    1e-6 of the largest entry."""
    plain = small_model(pool)
    images, tokens = inputs(plain)
    params = nn.meta.unbox(plain.init(jax.random.key(0), images, tokens)["params"])
    keep = random_patch_subset(jax.random.key(3), BATCH, 16, 0.5)
    with nn.intercept_methods(gather_before_blocks(keep)):
        expected = jax.jit(plain.apply)({"params": params}, images, tokens)
    model = small_model(pool, remat_policy=remat_policy, scan_layers=scan)
    out = jax.jit(model.apply)({"params": stack_layers(params) if scan else params}, images, tokens, keep_patches=keep)
    for key in ("image_embeds", "text_embeds"):
        np.testing.assert_allclose(out[key], expected[key], rtol=0, atol=1e-6)
    unmasked = jax.jit(plain.apply)({"params": params}, images, tokens)
    assert np.abs(out["image_embeds"] - unmasked["image_embeds"]).max() > 1e-3  # masking changes the image side


def step_config(**changes):
    c = default_config()
    c.model, c.dtype, c.batch_size, c.total_steps, c.loss_block_size = "ViT-Tiny-8", "float32", BATCH, 10, 2
    c.update(changes)
    return c


def test_masked_gradient_equals_plain_model_on_the_gathered_tokens():
    """loss_and_grads with mask_ratio 0.5 on 8 devices: loss and gradients equal those of the plain
    model whose blocks get the step's kept tokens (`flip.kept_patches` of (seed, step)) to float32
    rounding (1e-5 of the largest entry); micro-batches draw the full batch's masks, so two of them
    give the same gradient to the same tolerance."""
    model = small_model()
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    images, tokens = inputs(model)
    batch = jax.device_put({"images": images, "tokens": tokens}, sharding.batch_sharding(mesh))
    params = nn.meta.unbox(model.init(jax.random.key(0), images, tokens)["params"])
    state = {"step": jnp.int32(3), "params": params, "batch_stats": {}, "extra": {}}
    config = step_config()

    def masked(config, state, batch):
        return train_step.loss_and_grads(make_objective(model, config, 0.5), mesh, state, batch)[0:3:2]

    def reference(state, batch):
        keep = flip.kept_patches(model, config.seed, state["step"], BATCH, 0.5)
        with nn.intercept_methods(gather_before_blocks(keep)):
            return train_step.loss_and_grads(make_objective(model, config), mesh, state, batch)[0:3:2]

    want_loss, want = jax.jit(reference)(state, batch)
    tolerance = 1e-5 * max(float(jnp.abs(g).max()) for g in jax.tree.leaves(want))
    for got_config in (config, step_config(num_microbatches=2)):
        loss, grads = jax.jit(lambda s, b: masked(got_config, s, b))(state, batch)
        np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=tolerance), grads, want)


def test_validation_names_the_flip_fields():
    config = default_config()
    for ratio in (1.0, -0.1):
        config.flip.mask_ratio = ratio
        with pytest.raises(ValueError, match=r"config\.flip\.mask_ratio: must be in \[0, 1\)"):
            validate(config)
    config.model, config.flip.mask_ratio = "RN50", 0.5
    with pytest.raises(ValueError, match=r"config\.flip\.mask_ratio: .*ResNet"):
        validate(config)
    config.model, config.flip.unmasked_steps = "ViT-B-16", config.total_steps + 1
    with pytest.raises(ValueError, match=r"config\.flip\.unmasked_steps"):
        validate(config)
