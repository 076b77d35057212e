"""benchmarks/open_clip_side_by_side.py --profile on a real trace, in a fresh process: the profiler
records every XLA thread of its process, so work left running by other tests would count too."""
import json
import subprocess
import sys

from runs import REPO, TIMEOUT_S

TRACE = """
import importlib.util, json, pathlib
import jax, jax.numpy as jnp, numpy as np
spec = importlib.util.spec_from_file_location("side_by_side", pathlib.Path("benchmarks/open_clip_side_by_side.py"))
side_by_side = importlib.util.module_from_spec(spec)
spec.loader.exec_module(side_by_side)
x = jnp.asarray(np.random.default_rng(0).standard_normal((1024, 512), np.float32))
product = jax.jit(lambda a: a @ a.T)
product(x).block_until_ready()
print(json.dumps({"kinds": list(side_by_side.KINDS),
                  "seconds": side_by_side.clip_jax_profile(lambda: product(x).block_until_ready())}))
"""


def test_a_traced_product_lands_in_the_matmul_kinds():
    """One jitted [1024, 512] x [512, 1024] product: its time is the trace's matrix-product time."""
    done = subprocess.run([sys.executable, "-c", TRACE], capture_output=True, text=True, cwd=REPO, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    seconds = result["seconds"]
    assert set(seconds) == set(result["kinds"])
    matmul = seconds["matmul"] + seconds["matmul (Eigen fallback)"]
    assert matmul > 0 and matmul >= 0.5 * sum(seconds.values()), seconds
