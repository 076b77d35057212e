"""LiMBeR (config.loss="limber") and its caption LM (config.loss="causal_lm") through `python -m clip_jax.main`.

One caption-LM run and one LiMBeR run are shared by the tests of this file (module fixtures). LiMBeR's
image tower is the session's trained CLIP (conftest.trained_run: ViT-Tiny-8 with one block per tower).
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import clip_jax
from clip_jax.models import limber
from clip_jax.tokenizers import ClipTokenizer
from clip_jax.weights import storage as weights
from runs import REPO, final_params, losses, records, run_main
from test_limber import CAPTIONING, COLOURS, LM
from test_recipes import train_item

CONTEXT = 16  # shapes captions have at most 15 CLIP BPE tokens
SOT, EOT = ClipTokenizer.sot_token_id, ClipTokenizer.eot_token_id
VISION = dict(vision=dict(layers=1))  # the trained run's ViT-Tiny-8 (runs.TEST_CONFIG)


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


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    """A caption LM trained 40 steps of batch 16 (configs/lm_shapes.py, smaller)."""
    directory = tmp_path_factory.mktemp("lm")
    run_main(write_run_config(directory / "config.py", "lm_shapes", 40, 3e-3), str(directory / "run"))
    return str(directory / "run")


@pytest.fixture(scope="module")
def limber_run(tmp_path_factory, lm_run, trained_run):
    """LiMBeR trained 30 steps of batch 16 from the caption LM and the trained CLIP (configs/limber_shapes.py)."""
    directory = tmp_path_factory.mktemp("limber")
    extra = (
        f"    config.model_overrides = ml_collections.ConfigDict({VISION!r})\n"
        f"    config.evals = ml_collections.ConfigDict({{'captions': {CAPTIONING!r}}})\n"
    )
    run_main(
        write_run_config(directory / "config.py", "limber_shapes", 30, 1e-2, extra), str(directory / "run"),
        f"--config.limber.image_from={trained_run.workdir}", f"--config.limber.lm_from={lm_run}",
    )
    return str(directory / "run")


def test_caption_losses_fall(lm_run, limber_run):
    """The caption LM's loss falls from about ln 49408 = 10.8 (uniform over the vocabulary); LiMBeR's falls from
    the frozen LM's with an untrained prefix. Mean of the last 2 logged losses (every 5 steps) below the first."""
    for run in (lm_run, limber_run):
        train = [r for r in records(run) if "loss" in r]
        values = [r["loss"] for r in train]
        assert len(values) >= 6 and np.mean(values[-2:]) < values[0], (run, values)
        assert all(0 <= r["token_accuracy"] <= 1 and r["tokens"] > 0 for r in train)
    lm_losses = losses(lm_run)
    assert lm_losses[min(lm_losses)] > 9.0  # it started from scratch


def test_limber_trains_only_the_projection(lm_run, trained_run, limber_run):
    """After LiMBeR's run the image tower is the loaded CLIP's and the LM the caption run's, bit for bit; the
    projection moved; the optimizer holds moments (mu, nu) for the projection only."""
    params, metadata = final_params(limber_run)
    loaded_clip, _ = final_params(trained_run.workdir)
    loaded_lm, _ = final_params(lm_run)
    assert set(params) == {"visual", "text", "projection"}
    jax.tree.map(np.testing.assert_array_equal, params["visual"], loaded_clip["visual"])
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

    (logged,) = [r for r in records(limber_run) if "captions/cider" in r]
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
    """clip_jax.weights.storage rebuilds a LiMBeR run's Limber and a caption run's CaptionLM; metadata without a kind
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
