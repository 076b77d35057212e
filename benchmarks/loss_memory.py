"""Per-device memory and wall time of loss + grad, all-gathered vs blockwise, on simulated devices.

    python benchmarks/loss_memory.py                      # N = 1k .. 64k, d = 512
    python benchmarks/loss_memory.py --sizes 1024,32768 --dim 256 --time-max 0

For each loss and global batch N, the batch is split over --devices simulated CPU
devices with `jax.shard_map`; the table gives the per-device temporary memory of
jit(value_and_grad(loss)) from XLA's memory analysis (no allocation happens, so
every size is cheap) and, for N <= --time-max, the median wall time of compiled
calls (block_until_ready). Expected: blockwise memory grows linearly in N
(an [N/devices, block] tile), the all-gathered form's quadratically ([N/devices, N]).
"""
import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1024,2048,4096,8192,16384,32768,65536",
                        help="comma-separated global batch sizes N")
    parser.add_argument("--dim", type=int, default=512, help="embedding width d")
    parser.add_argument("--devices", type=int, default=8, help="simulated CPU devices")
    parser.add_argument("--block-size", type=int, default=1024, help="blockwise tile width")
    parser.add_argument("--losses", default="clip,sigmoid", help="comma-separated: clip,sigmoid")
    parser.add_argument("--time-max", type=int, default=8192,
                        help="time only sizes N <= this (0: memory only)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per entry (median)")
    return parser.parse_args(argv)


ARGS = parse_args()
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + f" --xla_force_host_platform_device_count={ARGS.devices}")

import jax  # noqa: E402  (after XLA_FLAGS)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from clip_jax.losses import clip_loss, sigmoid_loss  # noqa: E402

IMPLS = ("all_gather", "blockwise")
MIB = 2.0 ** 20


def loss_and_grad(name: str, impl: str, mesh: jax.sharding.Mesh, block_size: int):
    """jit(value_and_grad) of the sharded loss w.r.t. image, text, scale (and bias)."""
    axis = mesh.axis_names[0]

    def local(x, y, t, b):
        if name == "clip":
            return clip_loss(x, y, t, axis, impl=impl, block_size=block_size)
        return sigmoid_loss(x, y, t, b, axis, impl=impl, block_size=block_size)

    sharded = jax.shard_map(local, mesh=mesh, in_specs=(P(axis), P(axis), P(), P()), out_specs=P())
    return jax.jit(jax.value_and_grad(sharded, argnums=(0, 1, 2, 3)))


def measure(fn, mesh: jax.sharding.Mesh, n: int, dim: int, timed: bool, repeats: int):
    """(temp MiB per device, median ms or None) of fn at global batch n."""
    batch = NamedSharding(mesh, P(mesh.axis_names[0]))
    scalar = NamedSharding(mesh, P())
    shapes = (jax.ShapeDtypeStruct((n, dim), jnp.float32, sharding=batch),) * 2 + (
        jax.ShapeDtypeStruct((), jnp.float32, sharding=scalar),) * 2
    compiled = fn.lower(*shapes).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes / MIB
    if not timed:
        return temp, None
    rng = np.random.default_rng(0)
    x, y = (rng.normal(size=(n, dim)).astype(np.float32) for _ in range(2))
    x, y = (jax.device_put(a / np.linalg.norm(a, axis=1, keepdims=True), batch) for a in (x, y))
    t, b = jax.device_put(np.float32(10.0), scalar), jax.device_put(np.float32(-10.0), scalar)
    jax.block_until_ready(compiled(x, y, t, b))  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(x, y, t, b))
        times.append(time.perf_counter() - start)
    return temp, 1e3 * float(np.median(times))


def _ms(ms: float | None, width: int) -> str:
    return f"{'-':>{width}}" if ms is None else f"{ms:{width}.1f}"


def main() -> None:
    devices = jax.device_count()
    mesh = jax.make_mesh((devices,), ("data",), axis_types=(AxisType.Auto,))
    sizes = [int(s) for s in ARGS.sizes.split(",")]
    print(f"loss + grad per device: {devices} CPU devices, d={ARGS.dim}, block_size={ARGS.block_size}, "
          f"wall time for N <= {ARGS.time_max} (median of {ARGS.repeats})\n")
    header = (f"{'loss':8} {'N':>6} {'n/dev':>6} {'all_gather MiB':>15} {'blockwise MiB':>14} "
              f"{'ratio':>6} {'all_gather ms':>14} {'blockwise ms':>13}")
    print(header)
    print("-" * len(header))
    for name in ARGS.losses.split(","):
        for n in sizes:
            if n % devices:
                raise SystemExit(f"N={n} is not divisible by {devices} devices")
            timed = n <= ARGS.time_max
            results = {impl: measure(loss_and_grad(name, impl, mesh, ARGS.block_size), mesh, n,
                                     ARGS.dim, timed, ARGS.repeats) for impl in IMPLS}
            (dense_mib, dense_ms), (ring_mib, ring_ms) = results["all_gather"], results["blockwise"]
            print(f"{name:8} {n:6d} {n // devices:6d} {dense_mib:15.1f} {ring_mib:14.1f} "
                  f"{dense_mib / ring_mib:6.1f} {_ms(dense_ms, 14)} {_ms(ring_ms, 13)}", flush=True)
        print()


if __name__ == "__main__":
    main()
