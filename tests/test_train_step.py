"""The sharded train step equals the single-device step; accumulation equals one big batch."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import clip_jax
from clip_jax.config import default_config
from clip_jax.training.objectives import model_from_config
from clip_jax.runtime import sharding
from clip_jax.training import flops, optim, train_state, train_step

BATCH = 16


def one_block(model: str) -> dict:
    """model_overrides with one block per tower (RN-Tiny's image tower already has one per stage): a step of
    ViT-Tiny-8 (four blocks per tower) compiles in a third of the time, with every kind of layer still in it."""
    return {"text": {"layers": 1}, **({} if model.startswith("RN") else {"vision": {"layers": 1}})}


def small_config(**changes):
    """ViT-Tiny-8 (or `model`) with one block per tower, batch 16, captions of 77 tokens."""
    c = default_config()
    c.model = changes.get("model", "ViT-Tiny-8")
    c.model_overrides = ml_collections.ConfigDict(one_block(c.model))
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


def make_batch(seed=0, image_size=32):
    """A batch with every field an objective reads (DeCLIP's second view and augmented caption too)."""
    rng = np.random.default_rng(seed)
    batch = {}
    for suffix in ("", "_2"):
        batch["images" + suffix] = rng.integers(0, 256, (BATCH, image_size, image_size, 3), dtype=np.uint8)
    for suffix in ("", "_aug"):
        tokens = rng.integers(1, 49406, size=(BATCH, 77)).astype(np.int32)
        eot = rng.integers(2, 20, size=BATCH)
        tokens[np.arange(BATCH), eot] = 49407
        tokens[np.arange(77)[None, :] > eot[:, None]] = 0
        tokens[:, 0] = 49406
        batch["tokens" + suffix] = tokens
    return batch


def run_steps(config, mesh_sizes, devices, num_steps=2):
    """Host copies of (state after each step, metrics of each step) and the state's shardings."""
    model, _ = model_from_config(config)
    mesh = sharding.make_mesh(mesh_sizes, devices)
    rng = jax.random.key(0)
    compiled = train_step.compile_training(model, config, mesh, rng)
    state = compiled.init(rng)
    states, metrics = [], []
    for i in range(num_steps):
        images = compiled.abstract_batch.get("images")  # a caption LM reads tokens only
        fields = make_batch(i, images.shape[1] if images is not None else 32)
        fields = {k: fields[k][:, : v.shape[1]] for k, v in compiled.abstract_batch.items()}  # shorter contexts
        batch = jax.device_put(fields, sharding.batch_sharding(mesh))
        state, m, probe = compiled.step(state, batch)
        assert not {"i2t_top1", "pos_logit_mean"} & set(m)  # the in-batch pass is the log step's, not the step's
        states.append(jax.device_get(state))
        metrics.append(jax.device_get({**m, **compiled.in_batch_metrics(probe)}))
    return states, metrics, train_state.state_shardings(compiled.abstract_state)


# Rounding. The runs compared below compute the same sums in different orders
# (over devices, micro-batches, blocks of the loss), so float32 results differ
# in the last bits, by amounts that depend on the CPU's vector width and thread
# count. Measured on AMD EPYC with 1 and 2 threads, 4 and 8 devices, batches
# of 16 and 32 and seeds 0-3 (docs/testing.md, "Tolerances"): gradients and Adam
# moments within 2.2e-6 of the largest gradient entry, metrics within 7.2e-7
# relative. The bounds below are 45x and 28x those.
MOMENT_TOL = 1e-4  # of the tree's largest entry: each entry sums ~10^3 products (batch x positions)
METRIC_RTOL, METRIC_ATOL = 2e-5, 1e-4  # logit means average B^2 logits bounded by the scale 1/0.07


def adam_update_bound(b1, b2, t):
    """max |m_hat / sqrt(v_hat)| over all gradient sequences of length t (Cauchy-Schwarz).

    m_t = (1-b1) sum_k b1^k g_{t-k} and v_t = (1-b2) sum_k b2^k g_{t-k}^2 give
    |m_t| <= (1-b1) / sqrt(1-b2) * sqrt(sum_k (b1^2/b2)^k) * sqrt(v_t); the
    bias corrections divide m by 1-b1^t and v by 1-b2^t. Adam's eps only
    shrinks the update.
    """
    ratio = sum((b1 * b1 / b2) ** k for k in range(t))
    return (1 - b1) / (1 - b1**t) * math.sqrt((1 - b2**t) / (1 - b2)) * math.sqrt(ratio)


def assert_moments_close(got, want):
    """Adam's moments hold (clipped) gradients: m = (1-b1) g after one step, v = (1-b2) g^2."""
    for name in ("mu", "nu"):
        a, b = getattr(adam_state(got), name), getattr(adam_state(want), name)
        atol = MOMENT_TOL * max(float(np.abs(x).max()) for x in jax.tree.leaves(b))
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=0, atol=atol, err_msg=name), a, b)


def assert_params_close_after_adam(got, want, config, step):
    """Parameters after AdamW steps: the same up to what rounding can do to Adam's update.

    Adam divides each first moment by the root of the second, so an entry whose
    gradient is pure rounding noise (e.g. a key bias, which softmax ignores)
    moves by up to the learning rate in a direction that rounding picks. Both
    runs start each step from the same parameters (the first update is
    multiplied by a learning rate of 0, warmup starts there), so the entries can
    differ by at most 2 * lr * adam_update_bound at the last step, plus the
    rounding of the parameter itself.
    """
    opt = config.optimizer
    lr = float(optim.learning_rate_schedule(config)(step - 1))
    bound = 2 * lr * adam_update_bound(opt.b1, opt.b2, step)
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(x, y, rtol=2 * np.finfo(np.float32).eps, atol=bound), got, want
    )


def assert_metrics_close(got, want, got_params, want_params):
    """Every metric to rounding, except the parameter norm, which moves with the parameters."""
    for step, (a, b) in enumerate(zip(got, want, strict=True)):
        for key in b:
            if key == "param_norm":
                moved = float(optax.tree.norm(jax.tree.map(np.subtract, got_params[step], want_params[step])))
                atol = moved + METRIC_RTOL * b[key]  # | |a| - |b| | <= |a - b|
                np.testing.assert_allclose(a[key], b[key], rtol=0, atol=atol, err_msg=key)
            else:
                np.testing.assert_allclose(a[key], b[key], rtol=METRIC_RTOL, atol=METRIC_ATOL, err_msg=key)


def adam_state(state):
    return state["opt_state"][1][0]  # (clip, (adam, decay, schedule))


def assert_same_training(run, reference, config):
    """Two steps of `run` against `reference`: what is exact first, then what Adam amplifies."""
    (states, metrics, _), (want_states, want_metrics, _) = run, reference
    assert len(states) == len(want_states) == 2
    assert float(optim.learning_rate_schedule(config)(0)) == 0.0  # both steps see the same parameters
    for got, want in zip(states, want_states, strict=True):
        assert_moments_close(got, want)
        assert int(got["step"]) == int(want["step"])
        # BatchNorm's running statistics average activations over the global batch: rounding only
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got["batch_stats"],
                     want["batch_stats"])
    assert_metrics_close(metrics, want_metrics, [s["params"] for s in states], [s["params"] for s in want_states])
    assert_params_close_after_adam(states[-1]["params"], want_states[-1]["params"], config, step=2)


@pytest.fixture(scope="module")
def single_device_run():
    return run_steps(small_config(), {"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])


@pytest.mark.parametrize(
    "mesh_sizes,impl",
    [({"data": 8, "fsdp": 1, "tensor": 1}, "all_gather"), ({"data": 2, "fsdp": 4, "tensor": 1}, "blockwise")],
)
def test_sharded_step_equals_single_device(single_device_run, mesh_sizes, impl):
    config = small_config(loss_impl=impl)
    run = run_steps(config, mesh_sizes, jax.devices())
    assert_same_training(run, single_device_run, config)
    if mesh_sizes["fsdp"] > 1:  # parameters and optimizer moments are sharded over fsdp
        shardings = run[2]
        kernel = lambda tree: tree["text"]["transformer"]["resblocks_0"]["mlp"]["c_fc"]["kernel"]
        assert kernel(shardings["params"]).spec[0] == "fsdp"
        adam = adam_state(shardings)
        assert kernel(adam.mu).spec[0] == "fsdp" and kernel(adam.nu).spec[0] == "fsdp"


TENSOR_MESH = {"data": 2, "fsdp": 2, "tensor": 2}
# ViT-SO400M-14-SigLIP's structure at ViT-Tiny-8's size, with its sigmoid loss and 16-token captions (CLIP's
# BPE: the text tower takes its 49,408 ids). Its MAP head splits heads over 'tensor' like the blocks.
SIGLIP_SMALL = dict(
    model="ViT-SO400M-14-SigLIP",
    loss="siglip",
    model_overrides=dict(
        embed_dim=128,
        vision=dict(image_size=32, width=128, layers=1, patch_size=8, head_width=32),
        text=dict(width=128, heads=4, layers=1),
    ),
)


def tensor_parallel_config(model_name):
    config = small_config(**(SIGLIP_SMALL if model_name == "siglip" else {"model": model_name}), loss_impl="blockwise")
    if model_name == "siglip":
        config.data.context_length = 16
    return config


@pytest.mark.parametrize("model_name", ["ViT-Tiny-8", "RN-Tiny", "siglip"])
def test_tensor_parallel_step_equals_single_device(single_device_run, model_name):
    """data=2 x fsdp=2 x tensor=2: heads and MLP hidden units split over 'tensor' (a ResNet's convolutions
    replicate over it, its attention pool splits heads), the batch over data x fsdp; the same two steps as
    one device, to the rounding of the reductions over 'tensor' that join each projection's partial sums.
    'siglip' is ViT-SO400M-14-SigLIP's structure (MAP head, bidirectional text) with the sigmoid loss.

    The ResNet is compared with data=2 x fsdp=2 x tensor=1 on 4 devices, the same batch shards without the
    'tensor' split: against one device, its stem's kernel gradients differ by up to 3e-3 of the largest
    gradient already without 'tensor' (sums of 16 x 32 x 32 products that BatchNorm's backward makes cancel,
    so float32 rounding in another reduction order is amplified), more than MOMENT_TOL's rounding bound.
    """
    config = tensor_parallel_config(model_name)
    if model_name == "ViT-Tiny-8":
        reference = single_device_run
    elif model_name == "RN-Tiny":
        reference = run_steps(config, {**TENSOR_MESH, "tensor": 1}, jax.devices()[:4])
    else:
        reference = run_steps(config, {"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    run = run_steps(config, TENSOR_MESH, jax.devices())
    assert_same_training(run, reference, config)
    params = run[2]["params"]
    block = params["text"]["transformer"]["resblocks_0"]
    assert block["mlp"]["c_fc"]["kernel"].spec == P("fsdp", "tensor")
    assert block["mlp"]["c_proj"]["kernel"].spec == P("tensor", "fsdp")
    assert block["attn"]["query"]["kernel"].spec == P("fsdp", "tensor", None)  # [D, H, Dh]: head_dim whole
    assert block["attn"]["out"]["kernel"].spec == P("tensor", None, "fsdp")
    if model_name == "siglip":
        head = params["visual"]["attn_pool"]
        assert head["attn"]["key"]["kernel"].spec == P("fsdp", "tensor", None) and "logit_bias" in run[1][0]


def test_activations_follow_the_rules_only_under_the_train_steps_layout():
    """`constrain` splits per-head and MLP-hidden activations over 'tensor' and the batch over data x fsdp
    while a step is traced, leaves a dimension no mesh axis divides whole, and is a no-op elsewhere."""
    mesh = sharding.make_mesh(TENSOR_MESH)
    x = jax.device_put(np.zeros((8, 5, 6), np.float32), jax.sharding.NamedSharding(mesh, P()))
    hidden = jax.jit(lambda a: sharding.constrain(a * 2, ("batch", "length", "mlp")))
    odd = jax.jit(lambda a: sharding.constrain(a[:, :, :5] * 2, ("batch", "length", "mlp")))
    with sharding.activation_layout(mesh):
        assert hidden(x).sharding.spec == P(("data", "fsdp"), None, "tensor")
        assert odd(x).sharding.spec == P(("data", "fsdp"))
    assert jax.jit(lambda a: sharding.constrain(a * 2, ("batch", "length", "mlp")))(x).sharding.is_fully_replicated


def test_accumulation_equals_full_batch(single_device_run):
    config = small_config(num_microbatches=2)  # 8 rows per micro-batch: one per batch shard
    run = run_steps(config, {"data": 2, "fsdp": 4, "tensor": 1}, jax.devices())
    assert_same_training(run, single_device_run, config)


@pytest.mark.parametrize("negatives", ["shifted", "hardest"])
def test_clip_lite_step_with_critics_equals_single_device(negatives):
    """CLIP-Lite's critic heads (synchronised BatchNorm) and one-negative loss: data=2 x fsdp=4 against one device.

    The blockwise form scores the captions for the hardest negatives in tiles of 2 of the 2 per device.
    """
    config = small_config(loss="clip_lite", loss_impl="blockwise")
    config.clip_lite.update(critic_dim=32, negatives=negatives)
    reference = run_steps(config, {"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    assert set(reference[0][0]["batch_stats"]) == {"image_critic", "text_critic"}
    run = run_steps(config, {"data": 2, "fsdp": 4, "tensor": 1}, jax.devices())
    assert_same_training(run, reference, config)


def test_declip_step_equals_single_device():
    """DeCLIP's objective (two views, masked tokens, SimSiam heads with synchronised BatchNorm, the text queue)
    on data=2 x fsdp=4 against one device; the queue after each step equals the single-device one to rounding
    (unit vectors: 1e-5), and the second step searches a queue the first step filled."""
    config = small_config(loss="declip")
    config.declip.update(projection_dim=32, queue_size=2 * BATCH)
    reference = run_steps(config, {"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    states, metrics, _ = reference
    assert states[0]["extra"]["text_queue"].shape == (2, BATCH, 128)  # slots x batch x embed_dim
    assert np.abs(states[0]["extra"]["text_queue"][0]).max() > 0 and not states[0]["extra"]["text_queue"][1].any()
    assert {"declip/multi_view", "declip/image_ssl", "declip/text_ssl", "declip/nearest_neighbour"} <= set(metrics[0])
    run = run_steps(config, {"data": 2, "fsdp": 4, "tensor": 1}, jax.devices())
    assert_same_training(run, reference, config)
    for got, want in zip(run[0], states, strict=True):
        np.testing.assert_allclose(got["extra"]["text_queue"], want["extra"]["text_queue"], rtol=0, atol=1e-5)


def test_adam_update_bound():
    """The bound is attained by a constant gradient (ratio 1 after one step) and holds for random ones."""
    assert adam_update_bound(0.9, 0.98, 1) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(2000):
        g = rng.standard_normal(2) * rng.choice([1e-3, 1.0, 1e3], size=2)
        m = 0.1 * (0.9 * g[0] + g[1]) / (1 - 0.9**2)
        v = 0.02 * (0.98 * g[0] ** 2 + g[1] ** 2) / (1 - 0.98**2)
        worst = max(worst, abs(m) / math.sqrt(v))
    assert worst <= adam_update_bound(0.9, 0.98, 2) * (1 + 1e-12)
    assert worst > 0.95 * adam_update_bound(0.9, 0.98, 2)  # and is nearly tight


def test_logit_scale_is_clamped():
    config = small_config(max_logit_scale=10.0)  # below the initial 1/0.07
    states, metrics, _ = run_steps(config, {"data": 8, "fsdp": 1, "tensor": 1}, jax.devices(), num_steps=1)
    assert float(np.exp(states[0]["params"]["logit_scale"])) == pytest.approx(10.0, rel=1e-6)
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

    def step_flops(batch_size, **changes):
        config = small_config(batch_size=batch_size, **changes)
        model = clip_jax.create_model(
            config.model, scan_layers=config.scan_layers, remat_policy=config.remat_policy
        )
        mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
        batch = {
            "images": jax.ShapeDtypeStruct((batch_size, 32, 32, 3), jnp.float32, sharding=sharding.batch_sharding(mesh)),
            "tokens": jax.ShapeDtypeStruct((batch_size, 77), jnp.int32, sharding=sharding.batch_sharding(mesh)),
        }
        return flops.model_flops_per_step(model, config, mesh, batch)

    plain = step_flops(16)
    assert step_flops(16, scan_layers=True, remat_policy="full", num_microbatches=2) == plain
    assert step_flops(32) == pytest.approx(2 * plain, rel=0.02)
