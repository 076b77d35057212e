"""Train-step throughput on the devices at hand: step time, samples/s, TFLOP/s and MFU.

    python benchmarks/train_throughput.py                                  # ViT-Tiny-8, batch 64, CPU
    python benchmarks/train_throughput.py --models ViT-B-32,RN50 --batch-size 1024 --dtype bfloat16

Compiles the real train step (model, cross-device loss, AdamW update) for each
model over all local devices (mesh data = all), feeds it one random batch
again and again (no input pipeline: see benchmarks/input_pipeline.py), and
reports the median of --steps timed steps after --warmup. Model FLOPs come from
XLA's cost analysis of the plain step (no scan, remat or micro-batches),
temporary memory per device from the compiled step's memory analysis; MFU needs
a known device peak. --microbatches 1,4 shows what
gradient accumulation saves.
"""
import argparse
import statistics
import time

import jax
import numpy as np

from clip_jax import flops, sharding, train_step
from clip_jax.config import default_config
from clip_jax.metric_logging import peak_flops_per_device
from clip_jax.model_config import model_from_config


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="ViT-Tiny-8", help="comma-separated model names")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--remat", default="none", help="remat policy")
    parser.add_argument("--loss-impl", default="all_gather", choices=["all_gather", "blockwise"])
    parser.add_argument("--fsdp", type=int, default=1, help="mesh fsdp size (data = the rest)")
    parser.add_argument("--microbatches", default="1", help="comma-separated gradient accumulation settings")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    return parser.parse_args()


def benchmark(name: str, microbatches: int, args: argparse.Namespace) -> dict:
    config = default_config()
    config.update(model=name, dtype=args.dtype, remat_policy=args.remat, batch_size=args.batch_size,
                  loss_impl=args.loss_impl, total_steps=1000, num_microbatches=microbatches)
    config.optimizer.warmup_steps = 10
    config.mesh.fsdp = args.fsdp
    model, _ = model_from_config(config)
    mesh = sharding.make_mesh(config.mesh)
    rng = jax.random.key(0)
    compile_start = time.perf_counter()
    compiled = train_step.compile_training(model, config, mesh, rng)
    compile_seconds = time.perf_counter() - compile_start
    state = compiled.init(rng)
    size = model.visual.image_size
    data_rng = np.random.default_rng(0)
    batch = jax.device_put(
        {
            "images": data_rng.standard_normal((args.batch_size, size, size, 3), np.float32),
            "tokens": data_rng.integers(1, 49407, (args.batch_size, 77), dtype=np.int32),
        },
        sharding.batch_sharding(mesh),
    )
    times = []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        state, metrics = compiled.step(state, batch)
        jax.block_until_ready(metrics)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    model_flops = flops.model_flops_per_step(model, config, mesh, compiled.abstract_batch)
    device_flops = model_flops / jax.device_count() if model_flops else None
    peak = peak_flops_per_device(jax.devices()[0])
    return {
        "model": name,
        "microbatches": microbatches,
        "temp_mib": compiled.step.memory_analysis().temp_size_in_bytes / 2**20,
        "step_s": seconds,
        "samples_s": args.batch_size / seconds,
        "tflops_dev": device_flops / seconds / 1e12 if device_flops else float("nan"),
        "mfu": device_flops / seconds / peak if device_flops and peak else float("nan"),
        "compile_s": compile_seconds,
    }


def main() -> None:
    args = parse_args()
    device = jax.devices()[0]
    print(f"{jax.device_count()} x {device.device_kind} ({device.platform}), batch {args.batch_size}, "
          f"{args.dtype}, remat {args.remat}, loss {args.loss_impl}, fsdp {args.fsdp}")
    print(f"{'model':<14} {'micro':>5} {'temp MiB':>9} {'step s':>8} {'samples/s':>10} {'TFLOP/s/dev':>12} "
          f"{'MFU':>6} {'compile s':>10}")
    for name in args.models.split(","):
        for microbatches in map(int, args.microbatches.split(",")):
            r = benchmark(name, microbatches, args)
            mfu = "-" if r["mfu"] != r["mfu"] else f"{r['mfu']:.1%}"  # NaN: no known peak for this device
            print(f"{r['model']:<14} {r['microbatches']:5d} {r['temp_mib']:9.1f} {r['step_s']:8.3f} "
                  f"{r['samples_s']:10.1f} {r['tflops_dev']:12.3f} {mfu:>6} {r['compile_s']:10.1f}")


if __name__ == "__main__":
    main()
