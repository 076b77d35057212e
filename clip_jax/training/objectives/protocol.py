"""The `Objective` protocol: everything the config checks, the loop and the train step ask of a method.

A method is one class. Its class methods answer from the config alone,
before a model exists (validation, the model to build, the weights to load,
the towers that stay frozen); an instance, made once per compiled step from
the model and the config, is what the step runs. `clip_jax.training.objectives`
maps each `config.loss` name to its class.
"""
from __future__ import annotations

from typing import Any, ClassVar, NamedTuple, Protocol

import flax.linen as nn
import jax
import ml_collections
from jax.sharding import PartitionSpec

from clip_jax.losses.common import AxisName

Arrays = dict[str, jax.Array]


class InitialWeights(NamedTuple):
    """Weights a fresh run loads after its initialisation (`clip_jax.weights.storage.load_into_state`)."""

    path: str  # converted weights (clip_jax.import_weights) or a run's workdir
    tower: str | None  # the top-level subtree they replace ('visual', 'text'); None: every parameter
    field: str  # the config field that names them, for errors and logs


class Objective(Protocol):
    """A training method: its config checks and model (class level), and its train step (instance level)."""

    model_kind: ClassVar[str]  # the checkpoint metadata's "kind": "clip", "causal_lm" or "limber"
    eval_types: ClassVar[tuple[str, ...]]  # the config.evals types the method's model can run
    pipeline_options: ClassVar[dict[str, Any]]  # data.Pipeline keywords the method needs (DeCLIP's views)
    chains_captions: ClassVar[bool]  # whether it trains on data.chain_captions rows
    batch_fields: tuple[str, ...]  # the global batch's fields the step reads
    metric_outputs: tuple[str, ...]  # the outputs `in_batch_metrics` reads on log steps
    locked: tuple[str, ...]  # top-level parameter subtrees that get no update

    # -- from the config alone ------------------------------------------------

    @classmethod
    def validate(cls, config: ml_collections.ConfigDict) -> None:
        """Raises ConfigError naming the first of the method's own fields that cannot work."""

    @classmethod
    def validate_batch_layout(cls, config: ml_collections.ConfigDict, batch_shards: int) -> None:
        """The method's checks that need the number of devices the batch is split over."""

    @classmethod
    def create_model(cls, config: ml_collections.ConfigDict) -> tuple[nn.Module, dict[str, Any]]:
        """(model, the JSON-able overrides that rebuild it from `model_name`) for config."""

    @classmethod
    def model_name(cls, config: ml_collections.ConfigDict) -> str:
        """The name the checkpoint metadata's "model" holds (a clip_jax model or LM name)."""

    @classmethod
    def check_model(cls, model: nn.Module, config: ml_collections.ConfigDict) -> None:
        """Raises ValueError when `model` cannot train under config (logit bias, context, positions)."""

    @classmethod
    def locked_towers(cls, config: ml_collections.ConfigDict) -> tuple[str, ...]:
        """The top-level parameter subtrees that stay frozen ('visual', 'text')."""

    @classmethod
    def initial_weights(cls, config: ml_collections.ConfigDict) -> list[InitialWeights]:
        """The weights a fresh run loads over its initialisation, in order."""

    # -- the train step -------------------------------------------------------

    def batch_shapes(self) -> dict[str, tuple[tuple[int, ...], Any]]:
        """Each batch field's global (shape, dtype)."""

    def init_variables(self, rng: jax.Array) -> dict[str, Any]:
        """The model's variables ({'params', maybe 'batch_stats'}, boxed with logical axes)."""

    def init_extra(self) -> Arrays:
        """State carried from step to step besides parameters (global arrays)."""

    def extra_specs(self) -> dict[str, PartitionSpec]:
        """How each extra array is laid out over the mesh."""

    def prepare(self, step: jax.Array, batch: Arrays) -> Arrays:
        """Per-example model inputs [B, ...] of the global batch, with the step's random draws."""

    def forward(self, params: Any, batch_stats: Any, inputs: Arrays) -> tuple[Arrays, Any]:
        """(per-example outputs [B, ...], new batch_stats) of a (micro-)batch; differentiable."""

    def loss(
        self, outputs: Arrays, scalars: Arrays, extra: Arrays, step: jax.Array, axis_name: AxisName
    ) -> tuple[jax.Array, Arrays, Arrays]:
        """(loss of the global batch, metrics, new extra) from this device's rows, inside shard_map."""

    def in_batch_metrics(self, outputs: Arrays, scalars: Arrays, axis_name: AxisName) -> Arrays:
        """Metrics of the global batch from this device's rows of `metric_outputs`, on log steps."""


def lit_locked_towers(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The towers config.lit locks: 'visual' and/or 'text'."""
    return tuple(name for name, lock in (("visual", config.lit.lock_image), ("text", config.lit.lock_text)) if lock)


def init_from_weights(config: ml_collections.ConfigDict) -> list[InitialWeights]:
    """config.init_from (every parameter), then LiT's config.lit.init_image_from (the image tower), where set."""
    parts = [InitialWeights(config.init_from, None, "init_from")] if config.init_from else []
    if config.lit.init_image_from:
        parts.append(InitialWeights(config.lit.init_image_from, "visual", "lit.init_image_from"))
    return parts
