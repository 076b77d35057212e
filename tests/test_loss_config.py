"""Every loss's setup: the model each loss needs and what validation rejects (training through
`python -m clip_jax.main`: integration/test_loss_runs.py)."""
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from clip_jax.config import default_config
from clip_jax.config.validation import validate, validate_batch_layout
from clip_jax.models import create_model
from clip_jax.training.objectives import Clip, Siglip, model_from_config

TINY = dict(
    embed_dim=32,
    vision=dict(width=64, layers=1, head_width=32),
    text=dict(width=64, heads=2, layers=1, context_length=24),
)

def tiny_config(loss: str, **changes) -> ml_collections.ConfigDict:
    config = default_config()
    config.model = "ViT-Tiny-8"
    config.dtype = "float32"
    config.model_overrides = ml_collections.ConfigDict(TINY)
    config.data.context_length = 24
    config.loss = loss
    config.update(changes)
    return config


def init_params(model) -> dict:
    size = model.visual.image_size
    variables = model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), jnp.zeros((1, 24), jnp.int32))
    return nn.meta.unbox(variables["params"])


# ----------------------------------------------------------------------------
# the model a config builds for each loss


@pytest.mark.parametrize(
    "loss,changes,scale,bias",
    [
        ("clip", {}, math.log(1 / 0.07), None),
        ("clip_lite", {}, math.log(1 / 0.07), None),
        ("siglip", {}, math.log(10.0), -10.0),
        ("siglip", {"init_logit_scale": math.log(5.0), "init_logit_bias": -3.0}, math.log(5.0), -3.0),
        ("clip", {"init_logit_scale": 1.5}, 1.5, None),
    ],
)
def test_model_from_config_starts_from_the_loss_init(loss, changes, scale, bias):
    model, overrides = model_from_config(tiny_config(loss, **changes))
    params = init_params(model)
    np.testing.assert_allclose(params["logit_scale"], scale, rtol=1e-6)
    if bias is None:
        assert "logit_bias" not in params and "init_logit_bias" not in overrides
    else:
        np.testing.assert_allclose(params["logit_bias"], bias, rtol=1e-6)
    # The checkpoint metadata's overrides (JSON) rebuild the same model, as weights.load_model does.
    rebuilt = create_model("ViT-Tiny-8", **json.loads(json.dumps(overrides)))
    assert rebuilt == model
    jax.tree.map(np.testing.assert_array_equal, init_params(rebuilt), params)


def test_train_step_refuses_a_model_without_the_bias_its_loss_needs():
    siglip, clip = tiny_config("siglip"), tiny_config("clip")
    with pytest.raises(ValueError, match="config.loss: siglip needs a model with a logit_bias"):
        Siglip.check_model(create_model("ViT-Tiny-8"), siglip)
    with pytest.raises(ValueError, match="config.loss: clip has no logit bias"):
        Clip.check_model(model_from_config(siglip)[0], clip)
    Siglip.check_model(model_from_config(siglip)[0], siglip)
    Clip.check_model(model_from_config(clip)[0], clip)


# ----------------------------------------------------------------------------
# validation


@pytest.mark.parametrize(
    "loss,changes,field",
    [
        ("clip", {"init_logit_bias": -10.0}, "config.init_logit_bias"),
        ("clip_lite", {"init_logit_bias": -10.0}, "config.init_logit_bias"),
        ("siglip", {"init_logit_bias": float("nan")}, "config.init_logit_bias"),
        ("siglip", {"init_logit_scale": float("inf")}, "config.init_logit_scale"),
        ("clip", {"init_logit_scale": float("nan")}, "config.init_logit_scale"),
        ("clip", {"init_logit_scale": math.log(200.0)}, "config.init_logit_scale"),  # above max_logit_scale 100
        ("siglip", {"max_logit_scale": 5.0}, "config.max_logit_scale"),  # below siglip's initial 10
        ("clip", {"max_logit_scale": 0.0}, "config.max_logit_scale"),
    ],
)
def test_validate_rejects_logit_init(loss, changes, field):
    config = tiny_config(loss, **changes)
    with pytest.raises(ValueError, match=f"^{field}: "):
        validate(config)


@pytest.mark.parametrize("field", ["init_logit_scale", "init_logit_bias"])
def test_validate_rejects_logit_init_in_model_overrides(field):
    config = tiny_config("siglip")
    config.model_overrides[field] = -1.0
    with pytest.raises(ValueError, match=f"^config.model_overrides.{field}: set config.{field} instead"):
        validate(config)


def test_validate_accepts_the_logit_init_each_loss_can_use():
    validate(tiny_config("siglip", init_logit_scale=math.log(100.0), init_logit_bias=0.0))
    validate(tiny_config("clip", init_logit_scale=0.0))
    validate(tiny_config("clip_lite", init_logit_scale=math.log(50.0)))


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_blockwise_block_size_must_divide_the_per_device_batch(loss):
    config = tiny_config(loss, loss_impl="blockwise", batch_size=64, loss_block_size=3)
    with pytest.raises(ValueError, match="^config.loss_block_size: 3 must divide the per-device batch 8"):
        validate_batch_layout(config, batch_shards=8)
    config.num_microbatches = 4  # the loss still sees the whole batch: 8 per device
    with pytest.raises(ValueError, match="^config.loss_block_size: 3 must divide the per-device batch 8"):
        validate_batch_layout(config, batch_shards=8)
    for block_size in (1, 4, 8, 1024):
        config.loss_block_size = block_size
        validate_batch_layout(config, batch_shards=8)


def test_block_size_binds_only_the_blockwise_pair_losses():
    validate_batch_layout(tiny_config("clip", loss_impl="all_gather", batch_size=64, loss_block_size=3), 8)
    validate_batch_layout(tiny_config("clip_lite", loss_impl="blockwise", batch_size=64, loss_block_size=3), 8)


def test_batch_must_split_over_the_batch_shards():
    config = tiny_config("clip", batch_size=64, num_microbatches=4)
    with pytest.raises(ValueError, match="^config.batch_size: 64 in 4 micro-batch"):
        validate_batch_layout(config, batch_shards=32)
