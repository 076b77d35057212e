"""LiMBeR (config.loss="limber") and its caption LM (config.loss="causal_lm") through `python -m clip_jax.main`.

One caption-LM run and one LiMBeR run (from it and from saved CLIP weights) are shared by the tests of
this file (module fixtures); the sharded-step checks compile their own small steps.
"""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import linen as nn
from test_recipes import train_item
from test_train_loop import REPO, final_params, run_main
from test_train_step import (
    MOMENT_TOL, assert_metrics_close, assert_params_close_after_adam, run_steps, small_config,
)

import clip_jax
from clip_jax import optim, weights
from clip_jax.config import default_config, validate
from clip_jax.models import limber
from clip_jax.tokenizers import ClipTokenizer
from clip_jax.weights import save_variables

CONTEXT = 16  # shapes captions have at most 15 CLIP BPE tokens
SOT, EOT = ClipTokenizer.sot_token_id, ClipTokenizer.eot_token_id
# A one-layer GPT-J-layout LM (rotary positions) of width 32 with a tied head: most of its 1.6M
# parameters are the CLIP BPE vocabulary's embeddings.
LM = dict(width=32, heads=2, layers=1, mlp_dim=64, tie_embeddings=True, head_bias=False, max_positions=128)
VISION = dict(embed_dim=32, vision=dict(width=64, layers=1, head_width=32))  # ViT-Tiny-8 with one block

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]  # shapes.classnames("color")
CAPTIONING = dict(type="captioning", data="shapes:val#size=32&n=24&label=color", classnames=COLOURS, every_steps=30)


def write_run_config(path, config, steps, lr, extra=""):
    """configs/<config>.py, smaller: the LM above, batch 16, `steps` steps at peak learning rate `lr`."""
    path.write_text(
        "import runpy\nimport ml_collections\n\n\ndef get_config():\n"
        f"    config = runpy.run_path({os.path.join(REPO, 'configs', config + '.py')!r})['get_config']()\n"
        f"    config.lm.overrides = ml_collections.ConfigDict({LM!r})\n"
        f"    config.batch_size = 16\n    config.total_steps = {steps}\n    config.optimizer.warmup_steps = 4\n"
        f"    config.optimizer.learning_rate = {lr}\n    config.checkpoint_every_steps = {steps}\n"
        f"    config.log_every_steps = 5\n{extra}    return config\n"
    )
    return str(path)


def losses(workdir):
    return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl")) if '"loss"' in line]


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    """A caption LM trained 40 steps of batch 16 (configs/lm_shapes.py, smaller)."""
    directory = tmp_path_factory.mktemp("lm")
    run_main(write_run_config(directory / "config.py", "lm_shapes", 40, 3e-3), str(directory / "run"))
    return str(directory / "run")


@pytest.fixture(scope="module")
def clip_weights(tmp_path_factory):
    """Randomly initialised CLIP weights (ViT-Tiny-8, one block per tower) saved as a weights directory."""
    directory = str(tmp_path_factory.mktemp("clip") / "weights")
    overrides = {**VISION, "text": dict(width=32, heads=2, layers=1, context_length=CONTEXT)}
    model = clip_jax.create_model("ViT-Tiny-8", **overrides)
    variables = model.init(jax.random.key(3), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, CONTEXT), jnp.int32))
    save_variables(directory, jax.device_get(nn.meta.unbox(variables)), {"model": "ViT-Tiny-8", "overrides": overrides})
    return directory


@pytest.fixture(scope="module")
def limber_run(tmp_path_factory, lm_run, clip_weights):
    """LiMBeR trained 30 steps of batch 16 from the caption LM and the CLIP weights (configs/limber_shapes.py)."""
    directory = tmp_path_factory.mktemp("limber")
    extra = (
        f"    config.model_overrides = ml_collections.ConfigDict({VISION!r})\n"
        f"    config.evals = ml_collections.ConfigDict({{'captions': {CAPTIONING!r}}})\n"
    )
    run_main(
        write_run_config(directory / "config.py", "limber_shapes", 30, 1e-2, extra), str(directory / "run"),
        f"--config.limber.image_from={clip_weights}", f"--config.limber.lm_from={lm_run}",
    )
    return str(directory / "run")


def test_caption_losses_fall(lm_run, limber_run):
    """The caption LM's loss falls from about ln 49408 = 10.8 (uniform over the vocabulary); LiMBeR's falls from
    the frozen LM's with an untrained prefix. Mean of the last 2 logged losses (every 5 steps) below the first."""
    for run in (lm_run, limber_run):
        records = losses(run)
        values = [r["loss"] for r in records]
        assert len(values) >= 6 and np.mean(values[-2:]) < values[0], (run, values)
        assert all(0 <= r["token_accuracy"] <= 1 and r["tokens"] > 0 for r in records)
    assert losses(lm_run)[0]["loss"] > 9.0  # it started from scratch


def test_limber_trains_only_the_projection(lm_run, clip_weights, limber_run):
    """After LiMBeR's run the image tower is the loaded CLIP's and the LM the caption run's, bit for bit; the
    projection moved; the optimizer holds moments (mu, nu) for the projection only."""
    params, metadata = final_params(limber_run)
    loaded_clip, _ = weights.load_variables(clip_weights)
    loaded_lm, _ = final_params(lm_run)
    assert set(params) == {"visual", "text", "projection"}
    jax.tree.map(np.testing.assert_array_equal, params["visual"], loaded_clip["params"]["visual"])
    jax.tree.map(np.testing.assert_array_equal, params["text"], loaded_lm["text"])
    opt_state = train_item(limber_run)["opt_state"]
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(opt_state)]
    assert not [p for p in paths if "'visual'" in p or "'text'" in p], paths
    projection_size = sum(x.size for x in jax.tree.leaves(params["projection"]))
    moments = sum(np.size(x) for x in jax.tree.leaves(opt_state))
    assert 2 * projection_size <= moments <= 2 * projection_size + 4  # mu and nu, plus step counts
    assert metadata["kind"] == "limber" and metadata["model"] == "ViT-Tiny-8"


def test_captioning_eval_and_captioner_agree_with_the_final_model(limber_run):
    """The run's captioning eval (24 val images at the last step) logged what the saved model's greedy captions
    of those images score (limber.caption on one device, evaluation.caption_eval): BLEU-1..4, CIDEr-D and the
    share naming the image's colour. clip_jax.load_captioner gives those captions. (Greedy decoding of batches
    split over 8 devices or not, or of 16 rows or 24, agrees unless two logits tie to float32 rounding.)"""
    from clip_jax.data import Pipeline
    from clip_jax.evaluation.caption_eval import caption_eval_metrics

    (logged,) = [r for r in map(json.loads, open(os.path.join(limber_run, "metrics.jsonl"))) if "captions/cider" in r]
    assert logged["step"] == 30
    model, variables = weights.load_model(limber_run)
    pipeline = Pipeline(CAPTIONING["data"], training=False, batch_size=24, image_size=32, context_length=CONTEXT,
                        labels=True, text=True)
    (batch,) = list(pipeline.iterator())
    generated = limber.caption(model, variables, batch["images"], start_id=SOT, max_new_tokens=CONTEXT - 1, eos_id=EOT)
    want = caption_eval_metrics(np.asarray(generated), batch["tokens"][:, None], np.ones((24, 1), bool),
                                ClipTokenizer(CONTEXT), batch["labels"], COLOURS)
    assert {f"captions/{k}": v for k, v in want.items()} == pytest.approx({f"captions/{k}": logged[f"captions/{k}"] for k in want}, abs=1e-12)
    captioner = clip_jax.load_captioner(limber_run, batch_size=16)  # two batches: 16 and 8 padded to 16
    assert captioner.max_new_tokens == CONTEXT - 1  # from the run's metadata
    np.testing.assert_array_equal(captioner.tokens(batch["images"]), generated)
    texts = captioner(batch["images"])
    assert texts == [ClipTokenizer(CONTEXT).decode(row[: list(row).index(EOT) if EOT in row else None]).strip() for row in np.asarray(generated)]
    with pytest.raises(ValueError, match="load_captioner"):
        clip_jax.load(limber_run)


def test_metadata_rebuilds_the_models(lm_run, limber_run):
    """clip_jax.weights rebuilds a LiMBeR run's Limber and a caption run's CaptionLM; metadata without a kind
    (every checkpoint written before kinds existed) is a CLIP."""
    model, variables = weights.load_model(limber_run)
    assert isinstance(model, limber.Limber) and model.prefix_length == 16
    logits = model.apply(variables, jnp.zeros((2, 32, 32, 3)), jnp.full((2, CONTEXT), SOT, jnp.int32))
    assert logits.shape == (2, CONTEXT - 1, 49408)
    lm, lm_variables = weights.load_model(lm_run)
    assert isinstance(lm, limber.CaptionLM) and lm.text.config.width == LM["width"]
    assert lm.apply(lm_variables, jnp.full((2, CONTEXT), SOT, jnp.int32)).shape == (2, CONTEXT - 1, 49408)
    assert isinstance(weights.model_from_metadata({"model": "ViT-Tiny-8"}), clip_jax.models.CLIP)


def uncached_greedy(model, variables, images, steps):
    """Greedy captions by re-running the LM's whole forward pass (no cache) after each new token."""
    prompt = model.apply(variables, images, jnp.full((images.shape[0], 1), SOT, jnp.int32), method=model.prompt)
    text = {"params": variables["params"]["text"]}
    new = jnp.zeros((images.shape[0], 0), jnp.int32)
    for _ in range(steps):
        embeds = jnp.concatenate([prompt, model.text.apply(text, new, method=model.text.embed)], axis=1)
        logits = model.text.apply(text, embeds, method=model.text.forward)
        new = jnp.concatenate([new, jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)[:, None]], axis=1)
    return new


def test_captions_with_and_without_the_kv_cache_agree(limber_run):
    """Greedy captions of the trained LiMBeR model decoded with the KV cache equal the full-forward ones; top-k
    with k = 1 is greedy. (The same argmax of logits that agree to float32 rounding, ~1e-6 of their scale:
    only an exact tie could differ.)"""
    model, variables = weights.load_model(limber_run)
    images = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))  # noise: what is checked is the decoding
    cached = limber.caption(model, variables, images, start_id=SOT, max_new_tokens=8)
    np.testing.assert_array_equal(cached, uncached_greedy(model, variables, images, 8))
    top1 = limber.caption(model, variables, images, start_id=SOT, max_new_tokens=8, top_k=1, rng=jax.random.key(1))
    np.testing.assert_array_equal(top1, cached)
    stopped = limber.caption(model, variables, images, start_id=SOT, max_new_tokens=8, eos_id=EOT)
    print([ClipTokenizer(CONTEXT).decode(row[: list(row).index(EOT) if EOT in row else None]) for row in np.asarray(stopped)])


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
        for frozen in optim.locked_towers(config):
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
    from clip_jax.model_config import check_context_length, model_from_config

    config = default_config()
    config.loss, config.model, config.data.context_length = "limber", "ViT-Tiny-8", 24
    config.limber.update(image_from="/clip", lm_from="/lm")
    model, _ = model_from_config(config)
    with pytest.raises(ConfigError, match="config.data.context_length: .* 39 positions, but has 32"):
        check_context_length(model, config)
    config.limber.num_prompts = 5
    with pytest.raises(ConfigError, match="config.limber.num_prompts"):
        check_context_length(model, config)


def test_papers_setup_shards_gpt_j_6b_over_fsdp():
    """The paper's largest setup, RN50x16 grid features into GPT-J-6B, placed on a mesh of fsdp=8: every
    frozen LM matrix of 1M entries or more is split 8 ways, so each device holds about 1/8 of the LM's 6.05B
    parameters (shapes only: nothing is allocated)."""
    from clip_jax import sharding

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
