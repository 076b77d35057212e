"""clip_jax against open_clip on the same machine, in the same run: train step and towers.

    pip install open_clip_torch torch   # the benchmark's environment only, never the package's
    python benchmarks/open_clip_side_by_side.py                       # ViT-B-32 and RN50, batch 16, fp32
    python benchmarks/open_clip_side_by_side.py --models ViT-B-32 --rounds 3 --scan-layers both
    python benchmarks/open_clip_side_by_side.py --profile --scan-layers both     # where a step's time goes
    python benchmarks/open_clip_side_by_side.py --works "train step" --malloc "default,huge pages"

Each measurement runs in a fresh child process of this script, one library at
a time, so neither library's thread pool competes with the other's; the
rounds alternate clip_jax and open_clip and the table shows each one's median
over the rounds and the ratio clip_jax / open_clip in throughput (above 1:
clip_jax is faster). Both sides start from random weights of the same
architecture and take the same work:

- "train step": model forward and backward, the contrastive loss over the batch
  (clip_jax: the compiled train step of `default_config()` with the model,
  dtype float32; open_clip: `ClipLoss`) and an AdamW update;
- "image fwd+bwd" / "text fwd+bwd": one tower's embeddings summed, gradient
  with respect to that tower's parameters;
- "image fwd" / "text fwd": one tower's embeddings, no gradient;
- "matmul x W", "matmul x^T dy", "matmul dy W^T": the three matrix products of
  a text-tower MLP layer alone (forward, weight gradient, input gradient).

Times are the median of --steps calls after --warmup (compilation excluded;
products: at least 50 after 5).
Train steps and products also get their rate in GFLOP/s: model FLOPs of the
step (clip_jax's count, `clip_jax.training.flops`, the same architecture on both
sides) or 2 M K N of the product, over the time. The products' rate is what
this machine's matrix kernels reach, so a step's time cannot fall below its
FLOPs at that rate: the "bound" column is open_clip's step time over that
floor, the most any library could be ahead of it here.
--scan-layers picks clip_jax's layer layout: `nn.scan` over the transformer
blocks (the recipes' setting), unrolled blocks, or both as separate rows;
--remat its rematerialisation policy (default none, as `default_config()`).

--malloc picks the host allocator settings both libraries run under, in
every child alike, one row each: glibc's defaults; transparent huge pages for
large allocations (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, what clip_jax.main
restarts itself with: `clip_jax.runtime.host_memory`); or huge pages with freed
memory kept in the heap ("kept heap": one arena, no mmap, no trimming).

--profile traces one train step of each model in each library instead
(`jax.profiler` / `torch.profiler`, after --warmup steps) and prints where
its time goes, by kind of operation: matrix products (clip_jax's split into
XLA's YNNPACK kernels, which also run its convolutions, and its Eigen
fallback for a dot YNNPACK is not given), convolutions, layout
copies, the scan's per-layer slices and stacked buffers, and the rest. Each
kind's figure is the busy time of its operations summed over threads (XLA runs
independent operations side by side, so the sum can exceed the step's wall
time), as a share of all of them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable

from clip_jax.runtime import host_memory

# glibc's malloc as it comes; with huge pages (what clip_jax.main restarts itself with); and with huge
# pages and freed memory kept in the heap (one arena, no mappings of its own, no trimming), which
# removes the faults huge pages leave but measured no faster.
MALLOC = {
    "default": {},
    "huge pages": {"GLIBC_TUNABLES": host_memory.HUGE_PAGES},
    "kept heap": {"GLIBC_TUNABLES": f"{host_memory.HUGE_PAGES}:glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
                                    f"glibc.malloc.trim_threshold={1 << 40}"},
}
WORKS = ("train step", "image fwd+bwd", "text fwd+bwd", "image fwd", "text fwd")
# The three matrix products of a text-tower MLP layer, x [B*77, 512] and W [512, 2048]: the forward's
# x W, the weight gradient's x^T dy and the input gradient's dy W^T. Model-independent: run once.
# Each: (operands, as keys of MATMUL_SHAPES; the contracted (lhs, rhs) axes).
MATMULS = {
    "matmul x W": ((0, 1), ((1,), (0,))),
    "matmul x^T dy": ((0, 2), ((0,), (0,))),
    "matmul dy W^T": ((2, 1), ((1,), (1,))),
}
MATMUL_SHAPES = lambda batch: {0: (batch * CONTEXT_LENGTH, 512), 1: (512, 2048), 2: (batch * CONTEXT_LENGTH, 2048)}
CONTEXT_LENGTH = 77
VOCAB_SIZE = 49408


def malloc_names(text: str) -> list[str]:
    """--malloc's comma-separated MALLOC keys, checked."""
    names = text.split(",")
    unknown = [name for name in names if name not in MALLOC]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown malloc setting(s) {unknown}; choose from {list(MALLOC)}")
    return names


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="ViT-B-32,RN50", help="comma-separated open_clip model names")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--works", default=",".join(WORKS + tuple(MATMULS)),
                        help=f"comma-separated, of {WORKS + tuple(MATMULS)}")
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs of each library")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--scan-layers", default="on", choices=["on", "off", "both"], help="clip_jax's layer layout")
    parser.add_argument("--profile", action="store_true", help="where a train step's time goes, by kind of operation")
    parser.add_argument("--malloc", default="default", type=malloc_names,
                        help=f"comma-separated host allocator settings of both libraries' processes: {', '.join(MALLOC)}")
    parser.add_argument("--remat", default="none", help="clip_jax's remat policy (clip_jax.models.layers.REMAT_POLICIES)")
    parser.add_argument("--worker", choices=["clip_jax", "open_clip"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--scan", type=int, default=1, help=argparse.SUPPRESS)
    return parser.parse_args()


# Kinds of operation in --profile, and the names that mark them: XLA thunk names (clip_jax; checked in
# this order) and aten ops (open_clip).
KINDS = ("matmul", "matmul (Eigen fallback)", "convolution", "layout copies", "scan slices and buffers", "rest")
XLA_KINDS = (
    ("matmul", ("ynn_fusion",)),
    ("matmul (Eigen fallback)", ("dot",)),
    ("convolution", ("convolution",)),
    ("scan slices and buffers", ("dynamic-slice", "dynamic-update-slice", "wrapped_broadcast")),
    ("layout copies", ("copy", "transpose")),
)
# Containers (their children are counted) and the runtime's own markers.
XLA_CONTAINERS = ("ThunkExecutor", "ThreadpoolListener", "SlinkyThreadPool", "end:", "while", "call", "conditional")
TORCH_KINDS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product"),
    "convolution": ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_slow_conv2d"),
    "layout copies": ("aten::copy_", "aten::clone", "aten::contiguous"),
}


def xla_kind(name: str) -> str | None:
    """The KINDS entry of an XLA thunk event; None for containers and markers."""
    if name.startswith(XLA_CONTAINERS):
        return None
    return next((kind for kind, marks in XLA_KINDS if any(mark in name for mark in marks)), "rest")


def torch_kind(name: str) -> str:
    return next((kind for kind, ops in TORCH_KINDS.items() if name.startswith(ops)), "rest")


def clip_jax_profile(call: Callable[[], None]) -> dict[str, float]:
    """Busy seconds by kind of one `call` under jax.profiler (thunk events on XLA's threads)."""
    import glob
    import tempfile

    import jax

    with tempfile.TemporaryDirectory() as directory:
        with jax.profiler.trace(directory):
            call()
        (path,) = glob.glob(os.path.join(directory, "**", "*.xplane.pb"), recursive=True)
        data = jax.profiler.ProfileData.from_file(path)
    seconds = dict.fromkeys(KINDS, 0.0)
    for plane in data.planes:
        for line in plane.lines:
            if line.name == "python":
                continue
            for event in line.events:
                if kind := xla_kind(event.name):
                    seconds[kind] += event.duration_ns / 1e9
    return seconds


def open_clip_profile(call: Callable[[], None]) -> dict[str, float]:
    """Busy seconds by kind of one `call` under torch.profiler (each aten op's self time)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as trace:
        call()
    seconds = dict.fromkeys(KINDS, 0.0)
    for op in trace.key_averages():
        seconds[torch_kind(op.key)] += op.self_cpu_time_total / 1e6
    return seconds


def median_seconds(call: Callable[[], None], warmup: int, steps: int) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_or_profile(
    call: Callable[[], None], args: argparse.Namespace, profile: Callable[[Callable[[], None]], dict[str, float]]
) -> float | dict:
    """The median seconds of `call`, or with --profile its step seconds and busy seconds by kind."""
    seconds = median_seconds(call, args.warmup, args.steps)
    return {"step": seconds, "kinds": profile(call)} if args.profile else seconds


def matmul_operands(work: str, batch: int) -> list:
    """float32 numpy operands [lhs, rhs] of a MATMULS entry."""
    import numpy as np

    shapes = MATMUL_SHAPES(batch)
    rng = np.random.default_rng(0)
    return [rng.standard_normal(shapes[i], np.float32) for i in MATMULS[work][0]]


def product_calls(args: argparse.Namespace) -> tuple[int, int]:
    """(warmup, steps) of a product: at least 5 and 50, as one takes milliseconds and bounds the steps."""
    return max(args.warmup, 5), max(args.steps, 50)


def matmul_flops(batch: int) -> float:
    """2 M K N of each MATMULS product (all three have the same M K N)."""
    rows, inner = MATMUL_SHAPES(batch)[0]
    return 2.0 * rows * inner * MATMUL_SHAPES(batch)[1][1]


def clip_jax_result(args: argparse.Namespace) -> dict:
    """{"seconds": median seconds of one `args.work` call in clip_jax (or its --profile dict), "flops": model
    FLOPs of the call where known (train steps and products), else None}."""
    import jax
    import numpy as np

    if args.work in MATMULS:
        lhs, rhs = map(jax.device_put, matmul_operands(args.work, args.batch_size))
        product = jax.jit(lambda a, b: jax.lax.dot_general(a, b, (MATMULS[args.work][1], ((), ()))))
        seconds = median_seconds(lambda: jax.block_until_ready(product(lhs, rhs)), *product_calls(args))
        return {"seconds": seconds, "flops": matmul_flops(args.batch_size)}

    from clip_jax.config import default_config
    from clip_jax.training.objectives import model_from_config
    from clip_jax.runtime import sharding
    from clip_jax.training import flops, train_step

    config = default_config()
    config.update(model=args.model, dtype="float32", batch_size=args.batch_size, scan_layers=bool(args.scan),
                  remat_policy=args.remat)
    model, _ = model_from_config(config)
    size, batch = model.visual.image_size, args.batch_size
    data_rng = np.random.default_rng(0)
    images = data_rng.standard_normal((batch, size, size, 3), np.float32)
    tokens = data_rng.integers(1, VOCAB_SIZE - 1, (batch, CONTEXT_LENGTH), dtype=np.int32)
    if args.work == "train step":
        mesh = sharding.make_mesh(config.mesh)
        compiled = train_step.compile_training(model, config, mesh, jax.random.key(0))
        state = compiled.init(jax.random.key(0))
        pixels = data_rng.integers(0, 256, images.shape, dtype=np.uint8)  # the step normalizes them, as in training
        inputs = jax.device_put({"images": pixels, "tokens": tokens}, sharding.batch_sharding(mesh))

        def call() -> None:
            nonlocal state
            state, metrics, _ = compiled.step(state, inputs)
            jax.block_until_ready(metrics)

        step_flops = flops.model_flops_per_step(model, config, mesh, compiled.abstract_batch)
        return {"seconds": measure_or_profile(call, args, clip_jax_profile), "flops": step_flops}
    variables = jax.jit(model.init)(jax.random.key(0), images[:1], tokens[:1])
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    tower, method, data = ("visual", model.encode_image, images) if args.work.startswith("image") else (
        "text", model.encode_text, tokens)
    data = jax.device_put(data)

    def embed(tower_params, data):
        """The tower's embeddings in training mode (a ResNet normalises with the batch's statistics)."""
        embeddings, _ = model.apply({"params": {**params, tower: tower_params}, "batch_stats": batch_stats}, data,
                                    train=True, method=method, mutable=["batch_stats"])
        return embeddings

    if args.work.endswith("fwd+bwd"):
        fn = jax.jit(jax.grad(lambda p, x: embed(p, x).sum()))
    else:
        fn = jax.jit(embed)
    return {"seconds": median_seconds(lambda: jax.block_until_ready(fn(params[tower], data)), args.warmup, args.steps),
            "flops": None}


def open_clip_seconds(args: argparse.Namespace) -> float | dict:
    """Median seconds of one `args.work` call in open_clip."""
    import open_clip
    import torch

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    if args.work in MATMULS:
        lhs, rhs = map(torch.from_numpy, matmul_operands(args.work, args.batch_size))
        product = {"matmul x W": lambda: lhs @ rhs, "matmul x^T dy": lambda: lhs.t() @ rhs,
                   "matmul dy W^T": lambda: lhs @ rhs.t()}[args.work]
        return median_seconds(product, *product_calls(args))
    model = open_clip.create_model(args.model)
    model.train()
    size, batch = model.visual.image_size, args.batch_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    images = torch.randn(batch, 3, size, size)
    tokens = torch.randint(1, VOCAB_SIZE - 1, (batch, CONTEXT_LENGTH))
    if args.work == "train step":
        loss_fn = open_clip.ClipLoss()
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2)

        def call() -> None:
            optimizer.zero_grad(set_to_none=True)
            image_features, text_features, logit_scale = model(images, tokens)
            loss_fn(image_features, text_features, logit_scale).backward()
            optimizer.step()

        return measure_or_profile(call, args, open_clip_profile)
    image = args.work.startswith("image")
    encode, data = (model.encode_image, images) if image else (model.encode_text, tokens)
    if args.work.endswith("fwd+bwd"):
        tower_params = []
        for name, p in model.named_parameters():  # the image tower is visual.*, the text tower the rest
            p.requires_grad_(name.startswith("visual.") == image and name != "logit_scale")
            if p.requires_grad:
                tower_params.append(p)

        def call() -> None:
            for p in tower_params:
                p.grad = None
            encode(data).sum().backward()

        return median_seconds(call, args.warmup, args.steps)

    def forward() -> None:
        with torch.no_grad():
            encode(data)

    return median_seconds(forward, args.warmup, args.steps)


def worker(args: argparse.Namespace) -> None:
    result = clip_jax_result(args) if args.worker == "clip_jax" else {"seconds": open_clip_seconds(args)}
    print(json.dumps(result))


def measure(library: str, model: str, work: str, scan: bool, malloc: str, args: argparse.Namespace) -> dict:
    """One measurement in a fresh child process whose environment has the `malloc` settings (MALLOC): the
    worker's {"seconds": ..., "flops": ... (clip_jax only)}."""
    environment = {key: value for key, value in os.environ.items() if key != "GLIBC_TUNABLES"}
    command = [sys.executable, os.path.abspath(__file__), "--worker", library, "--model", model, "--work", work,
               "--scan", str(int(scan)), "--batch-size", str(args.batch_size), "--warmup", str(args.warmup),
               "--steps", str(args.steps), "--remat", args.remat, *(["--profile"] if args.profile else [])]
    result = subprocess.run(command, capture_output=True, text=True, env={**environment, **MALLOC[malloc]})
    if result.returncode:
        raise RuntimeError(f"{library} {model} {work} ({malloc} malloc) failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def versions() -> str:
    import jax
    import open_clip
    import torch

    return f"jax {jax.__version__}, torch {torch.__version__}, open_clip {open_clip.__version__}"


def print_profiles(args: argparse.Namespace, scans: list[bool], mallocs: list[str]) -> None:
    """--profile: per model and malloc setting, one row per library and layout, busy seconds (and share) by kind."""
    print(f"| model | malloc | library | step s | {' | '.join(KINDS)} |\n| --- | --- | --- | ---: |"
          f"{' ---: |' * len(KINDS)}")
    for model in args.models.split(","):
        for malloc in mallocs:
            runs = [(f"clip_jax ({'scan' if scan else 'unrolled'})",
                     measure("clip_jax", model, "train step", scan, malloc, args)["seconds"]) for scan in scans]
            runs.append(("open_clip", measure("open_clip", model, "train step", True, malloc, args)["seconds"]))
            for library, result in runs:
                busy = sum(result["kinds"].values())
                cells = " | ".join(f"{result['kinds'][k]:.2f} ({100 * result['kinds'][k] / busy:.0f}%)" for k in KINDS)
                print(f"| {model} | {malloc} | {library} | {result['step']:.2f} | {cells} |", flush=True)


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args)
        return
    scans = {"on": [True], "off": [False], "both": [True, False]}[args.scan_layers]
    mallocs = args.malloc
    print(f"{os.cpu_count()} CPU cores; {versions()}; batch {args.batch_size}, float32")
    if args.profile:
        print_profiles(args, scans, mallocs)
        return
    print(f"median of {args.steps} calls after {args.warmup}, {args.rounds} alternating rounds; clip_jax remat "
          f"{args.remat}")
    print("| model | work | malloc | clip_jax layers | clip_jax s | open_clip s | clip_jax samples/s "
          "| open_clip samples/s | GFLOP | clip_jax GFLOP/s | open_clip GFLOP/s | ratio | bound |\n"
          "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    works = args.works.split(",")
    # The products first: their best rate bounds the train steps measured after them.
    rows = [("-", work, True, malloc) for work in works if work in MATMULS for malloc in mallocs]
    rows += [(model, work, scan, malloc) for model in args.models.split(",") for work in works if work in WORKS
             for scan in (scans[:1] if model.startswith("RN") and work.startswith("image") else scans)
             for malloc in mallocs]
    product_rates = []
    for model, work, scan, malloc in rows:
        ours, theirs = [], []
        for _ in range(args.rounds):
            ours.append(measure("clip_jax", model, work, scan, malloc, args))
            theirs.append(measure("open_clip", model, work, scan, malloc, args))
        our_s, their_s = (statistics.median(r["seconds"] for r in runs) for runs in (ours, theirs))
        flops = ours[0]["flops"]
        layers = "scan" if scan else "unrolled"
        if work in MATMULS or (model.startswith("RN") and work.startswith("image")):
            layers = "-"
        samples = ["-", "-"] if work in MATMULS else [f"{args.batch_size / s:.2f}" for s in (our_s, their_s)]
        rates = ["-", "-"] if flops is None else [f"{flops / s / 1e9:.0f}" for s in (our_s, their_s)]
        if work in MATMULS:
            product_rates += [flops / our_s, flops / their_s]
        bound = f"{their_s * max(product_rates) / flops:.2f}" if work == "train step" and product_rates else "-"
        gflop = "-" if flops is None else f"{flops / 1e9:.1f}"
        print(f"| {model} | {work} | {malloc} | {layers} | {our_s:.4f} | {their_s:.4f} | {samples[0]} | {samples[1]} "
              f"| {gflop} | {rates[0]} | {rates[1]} | {their_s / our_s:.2f} | {bound} |", flush=True)


if __name__ == "__main__":
    main()
