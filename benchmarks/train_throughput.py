"""Train-step throughput on the devices at hand: step time, samples/s, TFLOP/s, MFU, device idle time.

    python benchmarks/train_throughput.py                                  # ViT-Tiny-8, batch 64, CPU
    python benchmarks/train_throughput.py --models ViT-B-32,RN50 --batch-size 1024 --dtype bfloat16
    python benchmarks/train_throughput.py --models ViT-B-32 --batch-size 256 --pipeline   # fed by the real data path

Compiles the real train step (model, cross-device loss, AdamW update) for each
model over all local devices (mesh data = all), feeds it one batch of random
uint8 pixels and tokens again and again, and reports the median of --steps
timed steps after --warmup. With --pipeline it then feeds the same step from
the training input pipeline (`clip_jax.data.Pipeline` over webdataset JPEG
shards written to a temporary directory, uint8 images, through
`DevicePrefetcher` as the training loop does) and reports the fed step time
and the devices' idle fraction, 1 - (step time) / (fed step time): the share
of the time the step waits for data. On a CPU the pipeline and the step share
the cores, so there it measures their contention rather than a feeding gap. Model FLOPs come from
XLA's cost analysis of the plain step (no scan, remat or micro-batches),
temporary memory per device from the compiled step's memory analysis; MFU needs
a known device peak. --microbatches 1,4 shows what
gradient accumulation saves.
"""
import argparse
import statistics
import tempfile
import time

import jax
import numpy as np

from clip_jax import data
from clip_jax.config import default_config
from clip_jax.training.objectives import model_from_config
from clip_jax.runtime import sharding
from clip_jax.training import flops, train_step
from clip_jax.training.metric_logging import peak_flops_per_device


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
    parser.add_argument("--pipeline", action="store_true", help="also feed the step from the input pipeline")
    parser.add_argument("--images", type=int, default=1024, help="JPEGs written for --pipeline")
    return parser.parse_args()


def median_step_seconds(step, state, batches, warmup: int, steps: int) -> tuple[float, object]:
    """(median seconds per step over `steps` after `warmup`, the last state); each step waits for its metrics."""
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        state, metrics, _ = step(state, next(batches))
        jax.block_until_ready(metrics)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times), state


def fed_step_seconds(step, state, mesh, image_size: int, args: argparse.Namespace) -> float:
    """Median step time with batches from the training input pipeline over freshly written JPEG shards."""
    from input_pipeline import write_shards  # benchmarks/ is on the path when this script runs

    with tempfile.TemporaryDirectory() as directory:
        write_shards(directory, args.images, num_shards=8)
        pipeline = data.Pipeline(
            f"wds:{directory}/*.tar", training=True, batch_size=args.batch_size // jax.process_count(), image_size=image_size,
            shuffle_buffer=1000, normalize=False,
        )
        batches = data.DevicePrefetcher(pipeline.iterator(), sharding.batch_sharding(mesh))
        seconds, _ = median_step_seconds(step, state, batches, args.warmup, args.steps)
    return seconds


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
            "images": data_rng.integers(0, 256, (args.batch_size, size, size, 3), dtype=np.uint8),
            "tokens": data_rng.integers(1, 49407, (args.batch_size, 77), dtype=np.int32),
        },
        sharding.batch_sharding(mesh),
    )
    seconds, state = median_step_seconds(compiled.step, state, iter(lambda: batch, None), args.warmup, args.steps)
    fed = fed_step_seconds(compiled.step, state, mesh, size, args) if args.pipeline else float("nan")
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
        "fed_step_s": fed,
        "idle": 1 - seconds / fed,
    }


def main() -> None:
    args = parse_args()
    device = jax.devices()[0]
    print(f"{jax.device_count()} x {device.device_kind} ({device.platform}), batch {args.batch_size}, "
          f"{args.dtype}, remat {args.remat}, loss {args.loss_impl}, fsdp {args.fsdp}")
    print(f"{'model':<14} {'micro':>5} {'temp MiB':>9} {'step s':>8} {'samples/s':>10} {'TFLOP/s/dev':>12} "
          f"{'MFU':>6} {'compile s':>10} {'fed step s':>11} {'idle':>6}")
    for name in args.models.split(","):
        for microbatches in map(int, args.microbatches.split(",")):
            r = benchmark(name, microbatches, args)
            mfu = "-" if r["mfu"] != r["mfu"] else f"{r['mfu']:.1%}"  # NaN: no known peak for this device
            fed, idle = ("-", "-") if not args.pipeline else (f"{r['fed_step_s']:.3f}", f"{r['idle']:.1%}")
            print(f"{r['model']:<14} {r['microbatches']:5d} {r['temp_mib']:9.1f} {r['step_s']:8.3f} "
                  f"{r['samples_s']:10.1f} {r['tflops_dev']:12.3f} {mfu:>6} {r['compile_s']:10.1f} {fed:>11} {idle:>6}")


if __name__ == "__main__":
    main()
