"""Every recipe in configs/ loads, validates, documents how to run it and builds its model."""
import glob
import os
import runpy

import jax
import pytest

from clip_jax.config import default_config
from clip_jax.config.validation import validate
from clip_jax.training.objectives import model_from_config
from clip_jax.training.objectives import make_objective

CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "*.py")))


def test_every_issue_recipe_is_present():
    names = {os.path.basename(p) for p in CONFIGS}
    assert {"tiny.py", "vit_b32.py", "vit_b16.py", "vit_l14.py", "rn50.py"} <= names
    assert {"siglip_b16.py", "lit_b16.py", "flip_b16.py", "cliplite_rn50_coco.py", "declip_vit_b32.py"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_validates_and_builds(path):
    module = runpy.run_path(path)
    assert "python -m clip_jax.main --config=configs/" in module["__doc__"]
    config = module["get_config"]()
    validate(config)
    model, _ = model_from_config(config)
    jax.eval_shape(make_objective(model, config).init_variables, jax.random.key(0))  # CLIPs, caption LMs, LiMBeR


def test_openai_hyperparameters():
    vit = runpy.run_path(CONFIGS[[os.path.basename(p) for p in CONFIGS].index("vit_b32.py")])["get_config"]()
    rn = runpy.run_path(CONFIGS[[os.path.basename(p) for p in CONFIGS].index("rn50.py")])["get_config"]()
    for config, b2, eps in ((vit, 0.98, 1e-6), (rn, 0.999, 1e-8)):
        opt = config.optimizer
        assert (opt.learning_rate, opt.b2, opt.eps, opt.weight_decay, opt.warmup_steps) == (5e-4, b2, eps, 0.2, 2000)
        assert config.batch_size == 32768 and config.max_logit_scale == 100.0


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("loss", "infonce", "config.loss"),
        ("batch_size", 0, "config.batch_size"),
        ("num_microbatches", 3, "config.num_microbatches"),
        ("dtype", "float16", "config.dtype"),
        ("model", "ViT-Q-1", "config.model"),
    ],
)
def test_validation_names_the_bad_field(field, value, message):
    config = default_config()
    config[field] = value
    with pytest.raises(ValueError, match=message):
        validate(config)


def test_validation_checks_evals():
    config = default_config()
    config.evals = {"imagenet": {"type": "zeroshot", "data": "tfds:imagenet2012:validation", "every_steps": 10}}
    validate(config)  # class names shipped for imagenet2012 (clip_jax.evaluation.benchmarks)
    config.evals = {"mine": {"type": "zeroshot", "data": "tfds:my_dataset:test", "every_steps": 10}}
    with pytest.raises(ValueError, match="config.evals.mine.classnames: .*'tfds:my_dataset:test' has no shipped"):
        validate(config)
    config.evals = {"probe": {"type": "linear_probe", "data": "tfds:cifar10:test", "every_steps": 10}}
    with pytest.raises(ValueError, match="config.evals.probe.train_data"):
        validate(config)


def test_a_weighted_mixture_can_be_written_in_a_config_file():
    from clip_jax import data

    config = default_config()
    config.data.train = [("shapes", 1.0), ("shapes:val", 3.0)]
    validate(config)
    pipeline = data.Pipeline(
        config.data.train, training=True, batch_size=4, image_size=32, process_index=0, process_count=1
    )
    assert [round(w, 2) for w in pipeline.weights] == [0.25, 0.75]
