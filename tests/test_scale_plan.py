"""benchmarks/scale.py's collective accounting: bytes per device, loops counted once per iteration."""
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from clip_jax.runtime import sharding

SPEC = importlib.util.spec_from_file_location("scale", pathlib.Path(__file__).parents[1] / "benchmarks" / "scale.py")
scale = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(scale)


def test_shape_bytes_counts_every_array_of_a_result_type():
    assert scale.shape_bytes("(f32[8,128]{1,0}, bf16[4])") == 8 * 128 * 4 + 4 * 2
    assert scale.shape_bytes("u8[3]{0}") == 3 and scale.shape_bytes("token[]") == 0


def test_collectives_in_a_loop_count_once_per_iteration():
    """A psum of f32[16] per device run 5 times in a scan, and one all-gather of f32[4] -> f32[32] outside."""
    mesh = sharding.make_mesh({"data": 8, "fsdp": 1, "tensor": 1})

    def local(x):  # x: this device's f32[4]
        rows = jnp.tile(x, 4)  # f32[16], varies over devices

        def body(total, k):
            return total + jax.lax.psum(rows * k, "data"), None

        total, _ = jax.lax.scan(body, jnp.zeros(16, jnp.float32), jnp.arange(5, dtype=jnp.float32))
        return total, jax.lax.all_gather(x, "data", tiled=True)

    f = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=P("data"), out_specs=(P(), P()), check_vma=False))
    x = jax.device_put(np.arange(32, dtype=np.float32), jax.sharding.NamedSharding(mesh, P("data")))
    moved = scale.collectives(f.lower(x).compile().as_text())
    assert moved["all-reduce"] == (5, 5 * 16 * 4)
    assert moved["all-gather"] == (1, 32 * 4)
