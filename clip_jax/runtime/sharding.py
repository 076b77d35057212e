"""Device mesh and placement: one Mesh ('data', 'fsdp', 'tensor') and one rule table for parameters and activations.

The batch is split over ('data', 'fsdp'). Parameters carry logical axis names
(set in the models); LOGICAL_RULES maps them to mesh axes: 'embed' over
'fsdp' gives FSDP / ZeRO-3 (parameters and optimizer state sharded, gathered
per use by XLA); 'mlp', 'heads' and 'vocab' over 'tensor' give Megatron-style
tensor parallelism: c_fc's columns and c_proj's rows, each attention head's
q/k/v and output projection live on one 'tensor' shard. Activations are pinned
with `constrain` under the same rules while the train step is traced
(`activation_layout`): the residual stream [B, L, D] split over the batch axes
and whole along D, q/k/v [B, L, H, Dh] and the MLP's hidden [B, L, mlp] split
over 'tensor' too, so each shard computes its heads and hidden units and one
reduction over 'tensor' per projection back into the stream joins them.
Convolutions (ResNet towers) replicate over 'tensor'; their attention pool
splits its heads. A dimension that a mesh axis does not divide stays replicated.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator, Mapping

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

LOGICAL_RULES: tuple[tuple[str, str | None], ...] = (
    ("embed", "fsdp"),
    ("conv_out", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("joint_embed", None),
    ("conv_in", None),
    ("layers", None),
    # activations only
    ("batch", BATCH_AXES),
    ("length", None),
    ("act_embed", None),
)


def mesh_shape(sizes: Mapping[str, int], num_devices: int) -> tuple[int, int, int]:
    """Resolves -1 ("the rest") in {'data', 'fsdp', 'tensor'} sizes for `num_devices` devices."""
    shape = [int(sizes[a]) for a in MESH_AXES]
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if num_devices % known:
            raise ValueError(f"config.mesh: {dict(zip(MESH_AXES, shape))} does not divide {num_devices} devices")
        shape[shape.index(-1)] = num_devices // known
    if int(np.prod(shape)) != num_devices:
        raise ValueError(f"config.mesh: {dict(zip(MESH_AXES, shape))} needs {int(np.prod(shape))} devices, have {num_devices}")
    return tuple(shape)


def make_mesh(sizes: Mapping[str, int], devices: list[jax.Device] | None = None) -> Mesh:
    """A Mesh over all (or the given) devices with Auto axes, so GSPMD propagates shardings."""
    devices = devices or jax.devices()
    shape = mesh_shape(sizes, len(devices))
    return jax.make_mesh(
        shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES), devices=devices
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over those of ('data', 'fsdp') the mesh has, the rest replicated."""
    axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
    return NamedSharding(mesh, PartitionSpec(axes or None))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def _fit(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh | jax.sharding.AbstractMesh) -> PartitionSpec:
    """Drops mesh axes from dimensions they do not divide."""
    axes = []
    for dim, axis in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = (axis,) if isinstance(axis, str) else tuple(axis or ())
        size = int(np.prod([mesh.shape[n] for n in names])) if names else 1
        axes.append(axis if size > 1 and dim % size == 0 else None)
    return PartitionSpec(*axes)


def logical_shardings(boxed_tree: Any, mesh: Mesh, rules=LOGICAL_RULES) -> Any:
    """NamedShardings for a tree of nn.LogicallyPartitioned (e.g. from jax.eval_shape(model.init)).

    Leaves without logical names (e.g. batch statistics) are replicated.
    """
    logical_specs = nn.get_partition_spec(boxed_tree)
    mesh_specs = nn.logical_to_mesh(logical_specs, rules)
    shapes = nn.meta.unbox(boxed_tree)
    return jax.tree.map(
        lambda spec, x: NamedSharding(mesh, _fit(spec, x.shape, mesh)),
        mesh_specs,
        shapes,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


# The rules `constrain` follows while a train step is traced; None elsewhere. Kept apart from flax's own
# logical-rules context, under which flax would also constrain every parameter as its module unboxes it.
_ACTIVATION_RULES: contextvars.ContextVar = contextvars.ContextVar("activation_rules", default=None)


@contextlib.contextmanager
def activation_layout(mesh: Mesh, rules=LOGICAL_RULES) -> Iterator[None]:
    """While tracing under it, `constrain` pins activations to `rules` on `mesh`."""
    token = _ACTIVATION_RULES.set(rules)
    try:
        with jax.set_mesh(mesh):
            yield
    finally:
        _ACTIVATION_RULES.reset(token)


def constrain(x: jax.Array, logical_axes: tuple[str | None, ...]) -> jax.Array:
    """x laid out by its logical axis names under `activation_layout`; unchanged outside one.

    Axes the rules do not name, or that a mesh axis does not divide, are left replicated.
    """
    rules, mesh = _ACTIVATION_RULES.get(), jax.sharding.get_abstract_mesh()
    if rules is None or mesh.empty:
        return x
    spec = nn.logical_to_mesh_axes(logical_axes, rules)
    return jax.lax.with_sharding_constraint(x, _fit(spec, x.shape, mesh))
