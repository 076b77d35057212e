"""LiT (config.lit): a locked tower keeps its weights bit for bit, has no optimizer state and no backward pass;
init_image_from loads only the image tower (a run through `python -m clip_jax.main`: integration/test_lit_run.py)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from test_train_step import BATCH, make_batch, small_config

import clip_jax
from clip_jax.config import default_config
from clip_jax.config.validation import validate
from clip_jax.runtime import sharding
from clip_jax.training import checkpointing, optim, train_state, train_step
from clip_jax.training.objectives import objective_class
from clip_jax.weights.into_state import load_into_state
from clip_jax.weights.storage import save_variables

CONTEXT = 16
# One-layer towers (RN-Tiny's image tower is already one block per stage): the step compiles in seconds.
OVERRIDES = {"ViT-Tiny-8": {"vision": {"layers": 1}}, "RN-Tiny": {}}
TEXT = {"layers": 1, "context_length": CONTEXT}


def lit_config(model, lock_image):
    config = small_config(model=model)
    config.data.context_length = CONTEXT
    config.lit.lock_image = lock_image
    return config


def compile_lit(model_name, lock_image):
    """(model, compiled training) on one device."""
    model = clip_jax.create_model(model_name, text=TEXT, **OVERRIDES[model_name])
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    return model, train_step.compile_training(model, lit_config(model_name, lock_image), mesh, jax.random.key(0))


def lit_batch(image_size, seed):
    batch = make_batch(seed)
    images = np.random.default_rng(seed).integers(0, 256, (BATCH, image_size, image_size, 3), dtype=np.uint8)
    return {"images": images, "tokens": batch["tokens"][:, :CONTEXT]}


def leaf_paths(tree):
    return [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)]


@functools.cache
def locked_steps(model_name):
    """(model, compiled locked step, host state at init, host state after 3 steps)."""
    model, compiled = compile_lit(model_name, lock_image=True)
    state = compiled.init(jax.random.key(0))
    start = jax.device_get(state)
    for i in range(3):
        state, _, _ = compiled.step(state, lit_batch(model.visual.image_size, i))
    return model, compiled, start, jax.device_get(state)


@pytest.fixture(params=["ViT-Tiny-8", "RN-Tiny"])
def locked_run(request):
    return locked_steps(request.param)


@pytest.fixture
def locked_vit():
    return locked_steps("ViT-Tiny-8")


def test_locked_image_tower_is_bit_identical_and_has_no_optimizer_state(locked_run):
    model, _, start, end = locked_run
    jax.tree.map(np.testing.assert_array_equal, end["params"]["visual"], start["params"]["visual"])
    jax.tree.map(np.testing.assert_array_equal, end["batch_stats"], start["batch_stats"])
    if model.visual.__class__.__name__ == "ModifiedResNet":
        assert "visual" in end["batch_stats"]  # the BatchNorm statistics exist and were frozen
    for tower in ("text", "logit_scale"):
        moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), end["params"][tower], start["params"][tower])
        assert all(jax.tree.leaves(moved)), tower
    paths = leaf_paths(end["opt_state"])
    assert not [p for p in paths if "'visual'" in p]  # no Adam moments for the image tower
    assert [p for p in paths if ".mu['text']" in p] and [p for p in paths if ".nu['text']" in p]
    moments = sum(x.size for x in jax.tree.leaves(end["opt_state"]))
    trained = sum(x.size for k, v in end["params"].items() if k != "visual" for x in jax.tree.leaves(v))
    assert moments <= 2 * trained + 2  # mu and nu of the trained parameters, plus step counts


def test_state_with_masked_moments_checkpoints_and_restores(locked_run, tmp_path):
    """Orbax saves and restores the optimizer state whose image-tower moments are MaskedNodes (a resume)."""
    _, compiled, _, end = locked_run
    checkpointer = checkpointing.Checkpointer(str(tmp_path), keep=1)
    checkpointer.save(3, jax.device_put(end, train_state.state_shardings(compiled.abstract_state)), {}, {})
    checkpointer.close()  # the save committed
    restored = jax.device_get(checkpointer.restore(3, compiled.abstract_state))
    assert jax.tree.structure(restored) == jax.tree.structure(end)
    jax.tree.map(np.testing.assert_array_equal, restored, end)


def test_lock_text_leaves_no_text_moments():
    """lock_text is the same mechanism for the other tower: AdamW holds moments for the image tower only."""
    config = lit_config("ViT-Tiny-8", lock_image=False)
    config.lit.lock_text = True
    model = clip_jax.create_model("ViT-Tiny-8", text=TEXT, **OVERRIDES["ViT-Tiny-8"])
    inputs = jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, CONTEXT), jnp.int32)
    params = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), *inputs)["params"])
    locked = objective_class(config).locked_towers(config)
    paths = leaf_paths(jax.eval_shape(optim.make_optimizer(config, locked).init, params))
    assert not [p for p in paths if "'text'" in p] and [p for p in paths if ".mu['visual']" in p]


def test_locked_step_skips_the_image_backward_pass(locked_vit):
    """The locked step saves at least 1.5x the image tower's forward FLOPs (its backward costs ~2x)."""
    model, compiled, start, _ = locked_vit
    _, unlocked = compile_lit("ViT-Tiny-8", lock_image=False)
    variables = {k: start[k] for k in ("params", "batch_stats") if start[k]}
    images = jnp.zeros((BATCH, model.visual.image_size, model.visual.image_size, 3))
    encode = jax.jit(lambda v, x: model.apply(v, x, method=model.encode_image))
    image_forward = encode.lower(variables, images).compile().cost_analysis()["flops"]
    locked_flops, unlocked_flops = compiled.step.cost_analysis()["flops"], unlocked.step.cost_analysis()["flops"]
    assert unlocked_flops - locked_flops >= 1.5 * image_forward, (unlocked_flops, locked_flops, image_forward)


def test_init_image_from_loads_only_the_image_tower(locked_vit, tmp_path):
    _, compiled, start, _ = locked_vit
    saved = {"params": jax.tree.map(lambda x: x + 1, start["params"])}  # weights of the same shapes, other values
    save_variables(tmp_path / "weights", saved, {"model": "ViT-Tiny-8"})
    shardings = train_state.state_shardings(compiled.abstract_state)
    state = load_into_state(
        str(tmp_path / "weights"), compiled.init(jax.random.key(0)), shardings, "visual", "lit.init_image_from"
    )
    loaded = jax.device_get(state["params"])
    jax.tree.map(np.testing.assert_array_equal, loaded["visual"], saved["params"]["visual"])
    for tower in ("text", "logit_scale"):
        jax.tree.map(np.testing.assert_array_equal, loaded[tower], start["params"][tower])

    bad = jax.tree.map(lambda x: x, saved)  # a copy
    bad["params"]["visual"]["proj"] = np.zeros((3, 3), np.float32)
    save_variables(tmp_path / "bad", bad, {"model": "ViT-Tiny-8"})
    with pytest.raises(ValueError, match=r"config\.lit\.init_image_from: .* do not fit .*visual/proj"):
        load_into_state(
            str(tmp_path / "bad"), compiled.init(jax.random.key(0)), shardings, "visual", "lit.init_image_from"
        )


@pytest.mark.parametrize(
    "changes,field",
    [({"lock_image": True}, "config.lit.lock_image"), ({"lock_text": True}, "config.lit.lock_text"),
     ({"lock_image": True, "lock_text": True, "init_image_from": "w"}, "config.lit.lock_text")],
)
def test_validation_names_the_lit_field(changes, field):
    """A locked tower starts from weights, and one tower at least trains."""
    config = default_config()
    config.lit.update(changes)
    with pytest.raises(ValueError, match=field):
        validate(config)
