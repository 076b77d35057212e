"""benchmarks/open_clip_side_by_side.py --profile: XLA's operations sorted into kinds from a real trace."""
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

PATH = pathlib.Path(__file__).parents[1] / "benchmarks" / "open_clip_side_by_side.py"
SPEC = importlib.util.spec_from_file_location("open_clip_side_by_side", PATH)
side_by_side = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(side_by_side)


def test_thunk_names_map_to_kinds_and_containers_are_not_counted():
    kind = side_by_side.xla_kind
    assert kind("ynn_fusion") == "matmul" and kind("dot") == "matmul (Eigen fallback)"
    assert kind("bitcast_dynamic-update-slice_fusion") == "scan slices and buffers"
    assert kind("copy_dynamic-update-slice_fusion") == "scan slices and buffers"  # the scan's, though a copy too
    assert kind("transpose_copy_fusion") == "layout copies" and kind("multiply_add_fusion") == "rest"
    assert kind("ThunkExecutor::Execute") is None and kind("while") is None and kind("end: ynn_fusion") is None
    assert side_by_side.torch_kind("aten::addmm") == "matmul" and side_by_side.torch_kind("aten::gelu") == "rest"


def test_a_traced_product_lands_in_the_matmul_kinds():
    """One jitted [1024, 512] x [512, 1024] product: its time is the trace's matrix-product time."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1024, 512), np.float32))
    product = jax.jit(lambda a: a @ a.T)
    product(x).block_until_ready()
    seconds = side_by_side.clip_jax_profile(lambda: product(x).block_until_ready())
    assert set(seconds) == set(side_by_side.KINDS)
    matmul = seconds["matmul"] + seconds["matmul (Eigen fallback)"]
    assert matmul > 0 and matmul >= 0.5 * sum(seconds.values())
