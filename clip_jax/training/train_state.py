"""The train state: {'step', 'params', 'batch_stats', 'opt_state', 'extra', 'nonfinite'}, its initialisation and layout.

Parameters and their optimizer moments are laid out by the logical-axis rule
table (`clip_jax.runtime.sharding`), the objective's extra state by its
extra_specs, the rest replicated. The layout is explicit, so the state's
shapes and shardings (the restore target) are known before anything is
compiled or allocated.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding

from clip_jax.runtime.sharding import logical_shardings, replicated
from clip_jax.training import nonfinite
from clip_jax.training.objectives import Objective

State = dict[str, Any]


def parameter_shardings(objective: Objective, mesh: Mesh) -> Any:
    """Each parameter's NamedSharding from its logical axes and the rule table (nothing allocated)."""
    return logical_shardings(jax.eval_shape(objective.init_variables, jax.random.key(0))["params"], mesh)


def _is_masked(x: Any) -> bool:
    """An optimizer-state leaf that optax.masked / multi_transform left out (a locked tower's moment)."""
    return isinstance(x, optax.MaskedNode)


def init_state_fn(objective: Objective, optimizer: optax.GradientTransformation) -> Callable[[jax.Array], State]:
    """rng -> fresh train state (unplaced: `compile_init` lays it out)."""

    def init(rng: jax.Array) -> State:
        variables = objective.init_variables(rng)
        params = nn.meta.unbox(variables["params"])
        return {
            "step": jnp.zeros((), jnp.int32),
            "params": params,
            "batch_stats": variables.get("batch_stats", {}),
            "opt_state": optimizer.init(params),
            "extra": objective.init_extra(),
            "nonfinite": nonfinite.init_counters(),
        }

    return init


def state_layout(
    objective: Objective, optimizer: optax.GradientTransformation, param_shardings: Any, mesh: Mesh, state: State
) -> Any:
    """Each leaf's NamedSharding for a state shaped like `state`: parameters and their optimizer moments by
    `param_shardings`, the objective's extra state by its extra_specs, everything else replicated."""
    opt_shardings = optax.tree_map_params(  # a locked tower's moments are MaskedNodes (none)
        optimizer, lambda moment, sharding: moment if _is_masked(moment) else sharding, state["opt_state"],
        param_shardings, transform_non_params=lambda _: replicated(mesh), is_leaf=_is_masked,
    )

    def everywhere(tree: Any) -> Any:
        return jax.tree.map(lambda _: replicated(mesh), tree)

    return {
        "step": replicated(mesh),
        "params": param_shardings,
        "batch_stats": everywhere(state["batch_stats"]),
        "opt_state": opt_shardings,
        "extra": {k: NamedSharding(mesh, spec) for k, spec in objective.extra_specs().items()},
        "nonfinite": everywhere(state["nonfinite"]),
    }


def init_with_layout(
    objective: Objective, optimizer: optax.GradientTransformation, param_shardings: Any, mesh: Mesh, rng: jax.Array
) -> tuple[Callable[[jax.Array], State], State]:
    """(init jitted with the state's layout, abstract state): shapes and shardings known without compiling
    or allocating anything; init compiles on its first call (a fresh start), never on a resume."""
    init = init_state_fn(objective, optimizer)
    shapes = jax.eval_shape(init, rng)
    shardings = state_layout(objective, optimizer, param_shardings, mesh, shapes)
    abstract = jax.tree.map(
        lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes, shardings
    )
    return jax.jit(init, out_shardings=shardings), abstract


def state_shardings(abstract_state: State) -> Any:
    return jax.tree.map(lambda x: x.sharding, abstract_state)
