"""Every loss from `python -m clip_jax.main`: the model each loss needs, training, and what validation rejects."""
import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from clip_jax import train_step
from clip_jax.config import default_config, validate, validate_batch_layout
from clip_jax.model_config import model_from_config
from clip_jax.models import create_model
from clip_jax.weights import load_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 30
TINY = dict(
    embed_dim=32,
    vision=dict(width=64, layers=1, head_width=32),
    text=dict(width=64, heads=2, layers=1, context_length=24),
)

TEST_CONFIG = f'''
import runpy
import ml_collections


def get_config():
    config = runpy.run_path({os.path.join(REPO, "configs", "tiny.py")!r})["get_config"]()
    config.model_overrides = ml_collections.ConfigDict({TINY!r})
    config.batch_size = 16
    config.total_steps = {STEPS}
    config.optimizer.warmup_steps = 3
    config.loss_block_size = 1  # blockwise: two tiles per device of 2 pairs, around a ring of 8 devices
    config.clip_lite.critic_dim = 0  # the loss on the towers' embeddings; critics: test_recipes, test_train_step
    config.checkpoint_every_steps = {STEPS}
    config.log_every_steps = 1
    config.evals = ml_collections.ConfigDict()
    return config
'''


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
        train_step.check_model_fits_loss(create_model("ViT-Tiny-8"), siglip)
    with pytest.raises(ValueError, match="config.loss: clip has no logit bias"):
        train_step.check_model_fits_loss(model_from_config(siglip)[0], clip)
    train_step.check_model_fits_loss(model_from_config(siglip)[0], siglip)
    train_step.check_model_fits_loss(model_from_config(clip)[0], clip)


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


# ----------------------------------------------------------------------------
# training through clip_jax.main on 8 simulated devices


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(loss, impl) -> workdir of a finished run, each run made once on first use."""
    config_file = tmp_path_factory.mktemp("config") / "losses_config.py"
    config_file.write_text(TEST_CONFIG)
    runs = {}

    def run(loss: str, impl: str) -> str:
        if (loss, impl) not in runs:
            workdir = str(tmp_path_factory.mktemp(f"{loss}_{impl}"))
            command = [
                sys.executable, "-m", "clip_jax.main", f"--config={config_file}", f"--workdir={workdir}",
                f"--config.loss={loss}", f"--config.loss_impl={impl}",
            ]
            result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
            assert result.returncode == 0, result.stderr[-3000:]
            runs[loss, impl] = workdir
        return runs[loss, impl]

    return run


def train_records(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if "loss" in r]


RUNS = [("siglip", "all_gather"), ("siglip", "blockwise"), ("clip_lite", "all_gather"), ("clip_lite", "blockwise")]
# The lowest loss a model reaches while it gives every pair of the batch of N = 16 the same logit z,
# i.e. before it tells matching pairs from others: min_z softplus(-z) + (N - 1) softplus(z) for siglip
# (at sigmoid(z) = 1/N) and min_z softplus(-z) + softplus(z) for clip_lite (at z = 0).
TIED_LOGIT_FLOOR = {"siglip": math.log(16) + 15 * math.log(16 / 15), "clip_lite": 2 * math.log(2)}


@pytest.mark.parametrize("loss,impl", RUNS)
def test_loss_falls(trained, loss, impl):
    """From the initial loss to the tied-logit floor within the run.

    In 30 steps the tiny model learns where the image and text embeddings lie
    relative to each other (and siglip's scale and bias against its -10 start);
    telling pairs apart takes longer, so the loss ends at about the floor.
    """
    records = train_records(trained(loss, impl))
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    losses = np.array([r["loss"] for r in records])
    assert np.isfinite(losses).all()
    first, last = losses[:3].mean(), losses[-5:].mean()
    assert last < 0.75 * first and last < 1.03 * TIED_LOGIT_FLOOR[loss], (first, last)
    for key in ("pos_logit_mean", "neg_logit_mean", "i2t_top1", "t2i_top1", "grad_norm"):
        assert all(np.isfinite(r[key]) for r in records), key
    assert all(0 <= r["i2t_top1"] <= 1 and 0 <= r["t2i_top1"] <= 1 for r in records)


@pytest.mark.parametrize("loss", ["siglip", "clip_lite"])
def test_blockwise_run_matches_all_gather_run(trained, loss):
    """Same values and gradients: the two runs' logged losses and logit parameters agree to float32 noise."""
    dense, ring = (train_records(trained(loss, impl)) for impl in ("all_gather", "blockwise"))
    keys = ["loss", "logit_scale", "pos_logit_mean", "neg_logit_mean"] + (["logit_bias"] if loss == "siglip" else [])
    for key in keys:
        np.testing.assert_allclose([r[key] for r in ring], [r[key] for r in dense], rtol=1e-4, atol=1e-5, err_msg=key)


def test_siglip_run_learns_and_saves_its_logit_bias(trained):
    workdir = trained("siglip", "all_gather")
    records = train_records(workdir)
    biases = np.array([r["logit_bias"] for r in records])
    assert np.isfinite(biases).all() and -10.5 < biases[0] < -9.5 and biases[-1] != biases[0]
    # The logged logit means include the bias: logits are logit_scale * cos + logit_bias with |cos| <= 1.
    assert all(abs(r["neg_logit_mean"] - r["logit_bias"]) <= r["logit_scale"] + 0.1 for r in records)
    model, variables = load_model(os.path.join(workdir, "checkpoints"))
    assert model.init_logit_bias == -10.0 and model.init_logit_scale == pytest.approx(math.log(10.0))
    np.testing.assert_allclose(variables["params"]["logit_bias"], biases[-1], rtol=1e-6)
