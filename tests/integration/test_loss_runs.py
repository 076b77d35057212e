"""Every loss through `python -m clip_jax.main` on 8 simulated devices: the loss falls, the blockwise (ring)
implementation trains like the all-gathered one, SigLIP learns and saves its logit bias."""
import math
import os

import numpy as np
import pytest

from clip_jax.weights.storage import load_model
from runs import REPO, records, run_main
from test_loss_config import TINY

STEPS = 30
LOSS_CONFIG = f'''
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


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(loss, impl) -> workdir of a finished run, each run made once on first use."""
    config_file = tmp_path_factory.mktemp("config") / "losses_config.py"
    config_file.write_text(LOSS_CONFIG)
    runs = {}

    def run(loss: str, impl: str) -> str:
        if (loss, impl) not in runs:
            workdir = str(tmp_path_factory.mktemp(f"{loss}_{impl}"))
            run_main(str(config_file), workdir, f"--config.loss={loss}", f"--config.loss_impl={impl}")
            runs[loss, impl] = workdir
        return runs[loss, impl]

    return run


def train_records(workdir: str) -> list[dict]:
    return [r for r in records(workdir) if "loss" in r]


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
    logged = train_records(trained(loss, impl))
    assert [r["step"] for r in logged] == list(range(1, STEPS + 1))
    losses = np.array([r["loss"] for r in logged])
    assert np.isfinite(losses).all()
    first, last = losses[:3].mean(), losses[-5:].mean()
    assert last < 0.75 * first and last < 1.03 * TIED_LOGIT_FLOOR[loss], (first, last)
    for key in ("pos_logit_mean", "neg_logit_mean", "i2t_top1", "t2i_top1", "grad_norm"):
        assert all(np.isfinite(r[key]) for r in logged), key
    assert all(0 <= r["i2t_top1"] <= 1 and 0 <= r["t2i_top1"] <= 1 for r in logged)


@pytest.mark.parametrize("loss", ["siglip", "clip_lite"])
def test_blockwise_run_matches_all_gather_run(trained, loss):
    """Same values and gradients: the two runs' logged losses and logit parameters agree to float32 noise."""
    dense, ring = (train_records(trained(loss, impl)) for impl in ("all_gather", "blockwise"))
    keys = ["loss", "logit_scale", "pos_logit_mean", "neg_logit_mean"] + (["logit_bias"] if loss == "siglip" else [])
    for key in keys:
        np.testing.assert_allclose([r[key] for r in ring], [r[key] for r in dense], rtol=1e-4, atol=1e-5, err_msg=key)


def test_siglip_run_learns_and_saves_its_logit_bias(trained):
    workdir = trained("siglip", "all_gather")
    logged = train_records(workdir)
    biases = np.array([r["logit_bias"] for r in logged])
    assert np.isfinite(biases).all() and -10.5 < biases[0] < -9.5 and biases[-1] != biases[0]
    # The logged logit means include the bias: logits are logit_scale * cos + logit_bias with |cos| <= 1.
    assert all(abs(r["neg_logit_mean"] - r["logit_bias"]) <= r["logit_scale"] + 0.1 for r in logged)
    model, variables = load_model(os.path.join(workdir, "checkpoints"))
    assert model.init_logit_bias == -10.0 and model.init_logit_scale == pytest.approx(math.log(10.0))
    np.testing.assert_allclose(variables["params"]["logit_bias"], biases[-1], rtol=1e-6)
