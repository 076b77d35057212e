"""The train state: {'step', 'params', 'batch_stats', 'opt_state'}, its initialisation and layout.

Parameters and their optimizer moments are laid out by the logical-axis rule
table (`clip_jax.sharding`); init is compiled once, so the state's shapes and
shardings are known (the restore target) before anything is allocated.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from clip_jax.sharding import logical_shardings, replicated

State = dict[str, Any]


def parameter_shardings(model: nn.Module, context_length: int, mesh: Mesh) -> Any:
    """Each parameter's NamedSharding from its logical axes and the rule table (nothing allocated)."""
    size = model.visual.image_size
    dummy = (jnp.zeros((1, size, size, 3)), jnp.zeros((1, context_length), jnp.int32))
    return logical_shardings(jax.eval_shape(model.init, jax.random.key(0), *dummy)["params"], mesh)


def _is_masked(x: Any) -> bool:
    """An optimizer-state leaf that optax.masked / multi_transform left out (a locked tower's moment)."""
    return isinstance(x, optax.MaskedNode)


def init_state_fn(
    model: nn.Module, optimizer: optax.GradientTransformation, image_size: int, context_length: int,
    param_shardings: Any, mesh: Mesh,
) -> Callable[[jax.Array], State]:
    """rng -> fresh train state; parameters and their optimizer moments laid out by `param_shardings`."""

    def init(rng: jax.Array) -> State:
        variables = model.init(
            rng, jnp.zeros((1, image_size, image_size, 3), jnp.float32), jnp.zeros((1, context_length), jnp.int32)
        )
        params = jax.lax.with_sharding_constraint(nn.meta.unbox(variables["params"]), param_shardings)
        opt_state = optimizer.init(params)
        opt_shardings = optax.tree_map_params(  # a locked tower's moments are MaskedNodes (none)
            optimizer, lambda moment, sharding: moment if _is_masked(moment) else sharding, opt_state, param_shardings,
            transform_non_params=lambda _: replicated(mesh), is_leaf=_is_masked,
        )
        return {
            "step": jnp.zeros((), jnp.int32),
            "params": params,
            "batch_stats": variables.get("batch_stats", {}),
            "opt_state": jax.lax.with_sharding_constraint(opt_state, opt_shardings),
        }

    return init


def compile_init(
    model: nn.Module, optimizer: optax.GradientTransformation, image_size: int, context_length: int,
    param_shardings: Any, mesh: Mesh, rng: jax.Array,
) -> tuple[Callable[[jax.Array], State], State]:
    """(compiled init, abstract state): the state's shapes and shardings without allocating it."""
    init = init_state_fn(model, optimizer, image_size, context_length, param_shardings, mesh)
    compiled = jax.jit(init).lower(rng).compile()
    abstract = jax.tree.map(
        lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
        jax.eval_shape(init, rng),
        compiled.output_shardings,
    )
    return compiled, abstract


def state_shardings(abstract_state: State) -> Any:
    return jax.tree.map(lambda x: x.sharding, abstract_state)
