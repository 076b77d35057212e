"""Plan a large run without running it: compile the real train step on simulated devices, print its costs.

    python benchmarks/scale.py --model ViT-bigG-14 --devices 512 --mesh data=32,fsdp=8,tensor=2 --batch 65536
    python benchmarks/scale.py --model ViT-B-32 --devices 8 --mesh data=1,fsdp=8,tensor=1 --batch 1048576 \\
        --microbatches 512                                       # a million-pair step
    python benchmarks/scale.py --table                           # docs/benchmarks.md's table (one child per row)

The step is `clip_jax.training.train_step.compile_training`'s: the model (layers
scanned, `--remat` rematerialisation, bfloat16 compute by default), the
cross-device loss (`--loss`: CLIP's, or the sigmoid loss for a model with a
logit bias such as ViT-SO400M-14-SigLIP; `--loss-impl`, blockwise by
default), gradient accumulation over `--microbatches` and the AdamW update,
laid out over the mesh by the rule table. It is lowered and compiled for
`--devices` simulated CPU devices and never run, so nothing of its size is
allocated.

Per device it prints, from XLA's memory analysis of the compiled step:
arguments (the state's shard plus the batch's), outputs, temporaries, and
their peak sum (outputs alias the donated state); and from the compiled HLO
the bytes every collective moves per step (each collective's result size per
device, times the trip count of the loops it sits in: a scanned layer's
all-gather counts once per layer). "fits" compares the peak with a 16 GiB
TPU v4 chip and an 80 GiB H100.

The figures are the CPU compiler's: the TPU and GPU compilers fuse and
schedule differently, so temporaries there differ (mostly smaller: fused
attention, bfloat16 buffers); arguments, outputs and collective bytes are
properties of the sharding and carry over.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
from typing import NamedTuple

os.environ.setdefault("JAX_PLATFORMS", "cpu")

# (model, devices, mesh, global batch, micro-batches): docs/benchmarks.md's table.
TABLE = (
    ("ViT-L-14", 64, "data=8,fsdp=8,tensor=1", 32768, 4),
    ("ViT-L-14", 512, "data=64,fsdp=8,tensor=1", 65536, 1),
    ("ViT-H-14", 64, "data=4,fsdp=16,tensor=1", 32768, 8),
    ("ViT-H-14", 256, "data=16,fsdp=16,tensor=1", 65536, 2),
    ("ViT-g-14", 256, "data=16,fsdp=16,tensor=1", 65536, 4),
    ("ViT-bigG-14", 256, "data=8,fsdp=16,tensor=2", 65536, 8),
    ("ViT-bigG-14", 512, "data=32,fsdp=8,tensor=2", 65536, 4),
    ("ViT-SO400M-14-SigLIP", 64, "data=4,fsdp=16,tensor=1", 32768, 4),
    ("ViT-B-32", 8, "data=1,fsdp=8,tensor=1", 1048576, 512),
)
CHIPS = (("TPU v4", 16 * 2**30), ("H100", 80 * 2**30))
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute", "all-to-all")
BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
         "f64": 8, "s64": 8, "u64": 8}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-bigG-14")
    parser.add_argument("--devices", type=int, default=512, help="simulated CPU devices")
    parser.add_argument("--mesh", default="data=32,fsdp=8,tensor=2", help="data=..,fsdp=..,tensor=.. (-1: the rest)")
    parser.add_argument("--batch", type=int, default=65536, help="global batch size")
    parser.add_argument("--microbatches", type=int, default=1, help="gradient accumulation steps")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--remat", default="full", help="remat policy (clip_jax.models.layers.REMAT_POLICIES)")
    parser.add_argument("--loss", choices=["clip", "siglip"], help="default: siglip for a model with a logit bias")
    parser.add_argument("--loss-impl", default="blockwise", choices=["all_gather", "blockwise"])
    parser.add_argument("--block-size", type=int, default=1024, help="loss tile width (blockwise)")
    parser.add_argument("--table", action="store_true", help="every row of TABLE, each in a child process")
    return parser.parse_args(argv)


def parse_mesh(text: str) -> dict[str, int]:
    sizes = dict(item.split("=") for item in text.split(","))
    if set(sizes) != {"data", "fsdp", "tensor"}:
        raise SystemExit(f"--mesh: name data, fsdp and tensor, got {text!r}")
    return {axis: int(size) for axis, size in sizes.items()}


def shape_bytes(text: str) -> int:
    """Bytes of every array type in an HLO result type, e.g. '(f32[8,128]{1,0}, bf16[4])' -> 8*128*4 + 4*2."""
    total = 0
    for dtype, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", text):
        if dtype in BYTES:
            count = 1
            for d in filter(None, dims.split(",")):
                count *= int(d)
            total += count * BYTES[dtype]
    return total


class Moved(NamedTuple):
    """One kind of collective in one step: how many times it runs and the bytes its results hold per device."""
    count: int
    bytes: int


def collectives(hlo: str) -> dict[str, Moved]:
    """Per device, how often each kind of collective runs in one execution of the HLO module's entry, and
    the bytes its results hold. The count is what the step pays in latency (one round trip or more each),
    the bytes what it pays in bandwidth.

    A collective inside a while loop counts once per iteration: each computation's multiplier is the sum,
    over the instructions that call it, of the caller's multiplier times the loop's known trip count (1 for
    calls that are not loops).
    """
    computations: dict[str, list[str]] = {}
    entry, current = None, None
    for line in hlo.splitlines():
        header = re.match(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if header and not line.startswith(" "):
            current = header.group(2)
            computations[current] = []
            entry = current if header.group(1) else entry
        elif current is not None and line.strip() and line.strip() != "}":
            computations[current].append(line)
    calls: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)  # callee -> [(caller, times)]
    for caller, lines in computations.items():
        for line in lines:
            trip = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
            for key, callee in re.findall(r"\b(body|condition|calls|to_apply|branch_computations)=\{?%?([\w.\-]+)", line):
                calls[callee].append((caller, int(trip.group(1)) if trip and key == "body" else 1))
    multiplier: dict[str, int] = {}

    def times(name: str) -> int:
        if name not in multiplier:
            multiplier[name] = 1 if name == entry else sum(times(c) * n for c, n in calls.get(name, ()))
        return multiplier[name]

    totals = dict.fromkeys(COLLECTIVES, Moved(0, 0))
    for name, lines in computations.items():
        for line in lines:
            op = re.search(r"=\s*(.*?)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(", line)
            if op:
                count, moved = totals[op.group(2)]
                totals[op.group(2)] = Moved(count + times(name), moved + times(name) * shape_bytes(op.group(1)))
    return totals


def plan(args: argparse.Namespace) -> dict:
    """Compiles the step for `args` and returns its per-device memory and collective bytes."""
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.devices}"
    import time

    import jax

    from clip_jax.config import default_config
    from clip_jax.config.validation import validate
    from clip_jax.training.objectives import model_from_config
    from clip_jax.models.architectures import model_spec
    from clip_jax.runtime import sharding
    from clip_jax.training import train_step

    spec = model_spec(args.model)
    loss = args.loss or ("clip" if spec.init_logit_bias is None else "siglip")
    config = default_config()
    config.update(model=args.model, dtype=args.dtype, batch_size=args.batch, num_microbatches=args.microbatches,
                  scan_layers=True, remat_policy=args.remat, loss=loss, loss_impl=args.loss_impl,
                  loss_block_size=args.block_size)
    config.data.context_length = spec.text.context_length
    config.model_overrides.text = {"vocab_size": spec.text.vocab_size}  # the model's own (no text is tokenized)
    config.mesh.update(parse_mesh(args.mesh))
    validate(config)
    model, _ = model_from_config(config)
    mesh = sharding.make_mesh(config.mesh)
    start = time.perf_counter()
    compiled = train_step.compile_training(model, config, mesh, jax.random.key(0))
    memory = compiled.step.memory_analysis()
    moved = collectives(compiled.step.as_text())
    params = sum(x.size for x in jax.tree.leaves(compiled.abstract_state["params"]))
    peak = memory.argument_size_in_bytes + memory.temp_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
    return {
        "model": args.model, "params": params, "devices": args.devices, "mesh": args.mesh, "batch": args.batch,
        "micro": args.microbatches, "arguments": memory.argument_size_in_bytes, "outputs": memory.output_size_in_bytes,
        "temporaries": memory.temp_size_in_bytes, "peak": peak, "collectives": moved,
        "compile_s": time.perf_counter() - start,
    }


def row(result: dict) -> str:
    gib = lambda b: f"{b / 2**30:.2f}"
    fits = " ".join(name for name, size in CHIPS if result["peak"] <= size) or "neither"
    moved = result["collectives"]
    return (f"| {result['model']} | {result['params'] / 1e9:.2f}B | {result['devices']} | {result['mesh']} | "
            f"{result['batch']:,} | {result['micro']} | {gib(result['arguments'])} | {gib(result['temporaries'])} | "
            f"{gib(result['outputs'])} | {gib(result['peak'])} | {fits} | "
            f"{' / '.join(gib(moved[kind].bytes) for kind in COLLECTIVES[:4])} | "
            f"{sum(m.count for m in moved.values()):,} | {result['compile_s']:.0f} |")


HEADER = ("| model | params | devices | mesh | batch | micro | arguments GiB | temporaries GiB | outputs GiB | "
          "peak GiB | fits | all-gather / all-reduce / reduce-scatter / permute GiB | collectives | compile s |\n"
          "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |")


def main() -> None:
    args = parse_args()
    if not args.table:
        print(HEADER)
        print(row(plan(args)), flush=True)
        return
    print(HEADER, flush=True)
    for model, devices, mesh, batch, micro in TABLE:  # a child each: the device count is fixed at jax's import
        command = [sys.executable, os.path.abspath(__file__), "--model", model, "--devices", str(devices),
                   "--mesh", mesh, "--batch", str(batch), "--microbatches", str(micro), "--dtype", args.dtype,
                   "--remat", args.remat, "--loss-impl", args.loss_impl, "--block-size", str(args.block_size),
                   *(["--loss", args.loss] if args.loss else [])]
        done = subprocess.run(command, capture_output=True, text=True)
        lines = done.stdout.strip().splitlines()
        print(lines[-1] if done.returncode == 0 and lines else f"| {model} | {devices} | {mesh} | failed: "
              f"{(done.stderr.strip().splitlines() or ['?'])[-1]} |", flush=True)


if __name__ == "__main__":
    main()
