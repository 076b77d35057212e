"""The input pipeline across processes: two JAX processes (gloo on loopback) read their own shards into one
global batch."""
import json
import os
import subprocess
import sys

from runs import REPO, free_port
from test_data_util import write_wds


_TWO_PROCESS_SCRIPT = r"""
import json, os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
import numpy as np
sys.path.insert(0, sys.argv[4])
from test_data_util import CONTEXT, CharTokenizer, detokenize
from clip_jax import data
from clip_jax.inference import images
pipe = data.Pipeline(sys.argv[3], training=False, batch_size=4, image_size=16, tokenizer=CharTokenizer(),
                     context_length=CONTEXT, cycle_length=2)  # process index and count from jax
local = next(pipe.iterator())
mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
batch = data.make_global_batch(local, data.batch_sharding(mesh))
tokens = jax.jit(lambda t: t, out_shardings=jax.sharding.NamedSharding(mesh, jax.P()))(batch["tokens"])
print(json.dumps({"local": detokenize(local["tokens"]), "global": detokenize(np.asarray(tokens)),
                  "shape": list(batch["images"].shape)}))
"""


def test_two_processes_assemble_one_global_batch(tmp_path):
    """Two JAX processes (gloo on localhost) each read their own shards into one global batch."""
    write_wds(str(tmp_path / "wds"), shards=2, per_shard=4)
    script = tmp_path / "worker.py"
    script.write_text(_TWO_PROCESS_SCRIPT)
    port = free_port()
    tests_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": REPO}
    workers = [
        subprocess.Popen(
            [sys.executable, str(script), f"127.0.0.1:{port}", str(i), f"wds:{tmp_path}/wds/*.tar", tests_dir],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=120) for w in workers]
    for w, (_, err) in zip(workers, outputs, strict=True):
        assert w.returncode == 0, err[-3000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert results[0]["local"] == ["r0", "r1", "r2", "r3"] and results[1]["local"] == ["r4", "r5", "r6", "r7"]
    assert results[0]["global"] == results[1]["global"] == [f"r{i}" for i in range(8)]
    assert results[0]["shape"] == [8, 16, 16, 3]
