"""The train state: {'step', 'params', 'batch_stats', 'opt_state', 'extra'}, its initialisation and layout.

Parameters and their optimizer moments are laid out by the logical-axis rule
table (`clip_jax.runtime.sharding`), the objective's extra state by its extra_specs;
init is compiled once, so the state's shapes and shardings are known (the
restore target) before anything is allocated.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding

from clip_jax.runtime.sharding import logical_shardings, replicated
from clip_jax.training.objectives import Objective

State = dict[str, Any]


def parameter_shardings(objective: Objective, mesh: Mesh) -> Any:
    """Each parameter's NamedSharding from its logical axes and the rule table (nothing allocated)."""
    return logical_shardings(jax.eval_shape(objective.init_variables, jax.random.key(0))["params"], mesh)


def _is_masked(x: Any) -> bool:
    """An optimizer-state leaf that optax.masked / multi_transform left out (a locked tower's moment)."""
    return isinstance(x, optax.MaskedNode)


def init_state_fn(
    objective: Objective, optimizer: optax.GradientTransformation, param_shardings: Any, mesh: Mesh
) -> Callable[[jax.Array], State]:
    """rng -> fresh train state; parameters and their optimizer moments laid out by `param_shardings`."""

    def init(rng: jax.Array) -> State:
        variables = objective.init_variables(rng)
        params = jax.lax.with_sharding_constraint(nn.meta.unbox(variables["params"]), param_shardings)
        opt_state = optimizer.init(params)
        opt_shardings = optax.tree_map_params(  # a locked tower's moments are MaskedNodes (none)
            optimizer, lambda moment, sharding: moment if _is_masked(moment) else sharding, opt_state, param_shardings,
            transform_non_params=lambda _: replicated(mesh), is_leaf=_is_masked,
        )
        extra_shardings = {k: NamedSharding(mesh, spec) for k, spec in objective.extra_specs().items()}
        return {
            "step": jnp.zeros((), jnp.int32),
            "params": params,
            "batch_stats": variables.get("batch_stats", {}),
            "opt_state": jax.lax.with_sharding_constraint(opt_state, opt_shardings),
            "extra": jax.lax.with_sharding_constraint(objective.init_extra(), extra_shardings),
        }

    return init


def compile_init(
    objective: Objective, optimizer: optax.GradientTransformation, param_shardings: Any, mesh: Mesh, rng: jax.Array
) -> tuple[Callable[[jax.Array], State], State]:
    """(compiled init, abstract state): the state's shapes and shardings without allocating it."""
    init = init_state_fn(objective, optimizer, param_shardings, mesh)
    compiled = jax.jit(init).lower(rng).compile()
    abstract = jax.tree.map(
        lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
        jax.eval_shape(init, rng),
        compiled.output_shardings,
    )
    return compiled, abstract


def state_shardings(abstract_state: State) -> Any:
    return jax.tree.map(lambda x: x.sharding, abstract_state)
