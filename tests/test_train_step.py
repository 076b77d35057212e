"""The sharded train step equals the single-device step; accumulation equals one big batch."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import clip_jax
from clip_jax import config as config_lib
from clip_jax import optim, sharding, train_step

BATCH = 16


def small_config(**changes):
    c = config_lib.default_config()
    c.model = "ViT-Tiny-8"
    c.dtype = "float32"
    c.batch_size = BATCH
    c.total_steps = 10
    c.optimizer.warmup_steps = 2
    c.optimizer.learning_rate = 1e-3
    c.optimizer.grad_clip_norm = 1.0
    c.loss_block_size = 2
    c.data.context_length = 77
    c.update(changes)
    return c


def make_batch(seed=0):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((BATCH, 32, 32, 3)).astype(np.float32)
    tokens = rng.integers(1, 49406, size=(BATCH, 77)).astype(np.int32)
    tokens[np.arange(BATCH), rng.integers(2, 20, size=BATCH)] = 49407
    return {"images": images, "tokens": tokens}


def run_steps(config, mesh_sizes, devices, num_steps=2):
    model = clip_jax.create_model(config.model)
    mesh = sharding.make_mesh(mesh_sizes, devices)
    rng = jax.random.key(0)
    compiled = train_step.compile_training(model, config, mesh, rng)
    state = compiled.init(rng)
    metrics = []
    for i in range(num_steps):
        batch = jax.device_put(make_batch(i), sharding.batch_sharding(mesh))
        state, m = compiled.step(state, batch)
        metrics.append(jax.device_get(m))
    return jax.device_get(state), metrics, train_step.state_shardings(compiled.abstract_state)


def assert_close(a, b, rtol=2e-5, atol=2e-6):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


@pytest.fixture(scope="module")
def single_device_run():
    return run_steps(small_config(), {"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])


@pytest.mark.parametrize(
    "mesh_sizes,impl",
    [({"data": 8, "fsdp": 1, "tensor": 1}, "all_gather"), ({"data": 2, "fsdp": 4, "tensor": 1}, "blockwise")],
)
def test_sharded_step_equals_single_device(single_device_run, mesh_sizes, impl):
    expected_state, expected_metrics, _ = single_device_run
    state, metrics, shardings = run_steps(small_config(loss_impl=impl), mesh_sizes, jax.devices())
    assert_close(metrics, expected_metrics)
    assert_close(state["params"], expected_state["params"])
    assert_close(state["opt_state"], expected_state["opt_state"])
    if mesh_sizes["fsdp"] > 1:  # parameters and optimizer moments are sharded over fsdp
        kernel = lambda tree: tree["text"]["transformer"]["resblocks_0"]["mlp"]["c_fc"]["kernel"]
        assert kernel(shardings["params"]).spec[0] == "fsdp"
        adam = shardings["opt_state"][1][0]
        assert kernel(adam.mu).spec[0] == "fsdp" and kernel(adam.nu).spec[0] == "fsdp"


def test_accumulation_equals_full_batch(single_device_run):
    expected_state, expected_metrics, _ = single_device_run
    state, metrics, _ = run_steps(small_config(num_microbatches=4), {"data": 2, "fsdp": 4, "tensor": 1}, jax.devices())
    assert_close(metrics, expected_metrics)
    assert_close(state["params"], expected_state["params"])


def test_logit_scale_is_clamped():
    config = small_config(max_logit_scale=10.0)  # below the initial 1/0.07
    state, metrics, _ = run_steps(config, {"data": 8, "fsdp": 1, "tensor": 1}, jax.devices(), num_steps=1)
    assert float(np.exp(state["params"]["logit_scale"])) == pytest.approx(10.0, rel=1e-6)
    assert metrics[0]["logit_scale"] == pytest.approx(10.0, rel=1e-6)


def test_weight_decay_mask_follows_openai():
    model = clip_jax.create_model("RN-Tiny")
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 77), jnp.int32))
    from flax import linen as nn

    mask = optim.weight_decay_mask(nn.meta.unbox(abstract["params"]))
    assert mask["visual"]["conv1"]["kernel"] and mask["text"]["text_projection"]
    assert mask["text"]["transformer"]["resblocks_0"]["attn"]["query"]["kernel"]
    assert not mask["logit_scale"]
    assert not mask["text"]["token_embedding"]["embedding"] and not mask["text"]["positional_embedding"]
    assert not mask["visual"]["bn1"]["scale"] and not mask["text"]["ln_final"]["bias"]
    assert not mask["text"]["transformer"]["resblocks_0"]["mlp"]["c_fc"]["bias"]


def test_model_flops_ignore_scan_remat_and_accumulation():
    """MFU's numerator: the plain step's FLOPs, whatever the loop structure (XLA counts a loop body once)."""

    def flops(batch_size, **changes):
        config = small_config(batch_size=batch_size, **changes)
        model = clip_jax.create_model(
            config.model, scan_layers=config.scan_layers, remat_policy=config.remat_policy
        )
        mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
        batch = {
            "images": jax.ShapeDtypeStruct((batch_size, 32, 32, 3), jnp.float32, sharding=sharding.batch_sharding(mesh)),
            "tokens": jax.ShapeDtypeStruct((batch_size, 77), jnp.int32, sharding=sharding.batch_sharding(mesh)),
        }
        return train_step.model_flops_per_step(model, config, mesh, batch)

    plain = flops(16)
    assert flops(16, scan_layers=True, remat_policy="full", num_microbatches=2) == plain
    assert flops(32) == pytest.approx(2 * plain, rel=0.02)
