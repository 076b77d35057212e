"""The objective registry: every method behind one protocol, and a new method as one entry in OBJECTIVES
that validation, the model and the step then find (no check of config.loss elsewhere)."""
import jax
import ml_collections
import numpy as np
import pytest

from clip_jax.config import ConfigError, default_config
from clip_jax.config.errors import check
from clip_jax.config.validation import validate, validate_batch_layout
from clip_jax.training import objectives
from clip_jax.training.objectives import OBJECTIVES, Clip, make_objective, model_from_config, model_metadata
from clip_jax.training.objectives.protocol import Objective

PROTOCOL_MEMBERS = sorted(
    name for name in set(vars(Objective)) | set(Objective.__annotations__)
    if not name.startswith("_") and name not in dir(object)
)


def test_every_method_implements_the_whole_protocol():
    assert len(PROTOCOL_MEMBERS) >= 20, PROTOCOL_MEMBERS
    for loss, cls in OBJECTIVES.items():
        config = default_config()
        config.loss = loss
        missing = [name for name in PROTOCOL_MEMBERS if name != "locked" and not hasattr(cls, name)]
        assert not missing, (loss, missing)
        # Class-level answers are values of the declared kinds, from the config alone.
        assert cls.model_kind in ("clip", "causal_lm", "limber") and isinstance(cls.eval_types, tuple), loss
        assert isinstance(cls.locked_towers(config), tuple) and isinstance(cls.initial_weights(config), list), loss


class Doubled(Clip):
    """A method added in one place: CLIP's loss times two, with a field of its own that it validates."""

    @classmethod
    def validate(cls, config: ml_collections.ConfigDict) -> None:
        super().validate(config)
        check(config.doubled_factor == 2.0, "doubled_factor", "must be 2")

    def pair_loss(self, x, y, scale, bias, axis_name):
        return 2.0 * super().pair_loss(x, y, scale, bias, axis_name)


def test_a_new_method_is_one_registry_entry(monkeypatch):
    config = default_config()
    config.model, config.dtype, config.batch_size, config.data.context_length = "ViT-Tiny-8", "float32", 8, 24
    config.model_overrides = ml_collections.ConfigDict({"text": {"context_length": 24}})
    config.loss = "doubled"
    config.doubled_factor = 3.0
    with pytest.raises(ConfigError, match="config.loss: 'doubled' is not one of"):
        validate(config)
    monkeypatch.setitem(objectives.OBJECTIVES, "doubled", Doubled)
    with pytest.raises(ConfigError, match="^config.doubled_factor: must be 2$"):  # validation asked the class
        validate(config)
    config.doubled_factor = 2.0
    validate(config)
    validate_batch_layout(config, batch_shards=8)
    model, overrides = model_from_config(config)
    assert model_metadata(config, overrides) == {"kind": "clip", "model": "ViT-Tiny-8", "overrides": overrides}

    rng = jax.random.key(0)
    x, y = (jax.random.normal(k, (8, 16)) for k in jax.random.split(rng, 2))
    x, y = (v / np.linalg.norm(v, axis=-1, keepdims=True) for v in (x, y))
    doubled = make_objective(model, config).pair_loss(x, y, 10.0, None, None)
    plain = Clip(model, config).pair_loss(x, y, 10.0, None, None)
    np.testing.assert_array_equal(doubled, 2.0 * plain)  # the same program on the same inputs; doubling is exact
