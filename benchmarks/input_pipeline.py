"""Training input pipelines side by side: clip_jax against open_clip, images/s and per core.

    /tmp/ocvenv/bin/pip install open_clip_torch webdataset   # a separate environment for open_clip
    python benchmarks/input_pipeline.py                         # 2048 images, batch 64, 3 rounds
    python benchmarks/input_pipeline.py --images 1024 --batches 12 --rounds 1   # quick
    python benchmarks/input_pipeline.py --open_clip_python /path/to/python --open_clip_workers 8

Writes img2dataset-like webdataset shards to a temp dir (jpg/txt/json per key;
JPEG quality 95, each side independently random in 256..512 px; smooth
gradients, blobs and noise, so JPEG sizes are photo-like, ~40-75 KB; captions
of 5-25 Zipf-distributed words) and feeds the same shards through both
libraries' training loaders, each producing 224 px random resized crops
(area 0.9-1.0, bicubic) normalized with the OpenAI mean/std, and CLIP BPE
tokens:

- clip_jax: `clip_jax.data.Pipeline(training=True, tokenizer="clip",
  shuffle_buffer=1000, normalize=False)` on one process, iterated with
  `.iterator()`: tf.data threads decode and augment, Python reads the tars
  and tokenizes. Images come out as uint8 pixels, as training sends them to
  the devices, where the step normalizes them (open_clip's workers normalize
  to float32 on the CPU).
- open_clip: the pipeline of `get_wds_dataset` in open_clip's
  `training/data.py` (shard shuffle, split by node and worker, tar to samples,
  sample shuffle 5000 with 1000 initial, decode "pilrgb", rename, map_dict with
  `open_clip.image_transform(size, is_train=True)` and
  `open_clip.get_tokenizer("ViT-B-32")`, to_tuple, batched) in a
  `wds.WebLoader(batch_size=None, num_workers=W, persistent_workers=True)`;
  W = --open_clip_workers, by default the cores this process may use. It runs
  under --open_clip_python (torch, open_clip and webdataset installed there);
  without them its row is skipped.

Each measurement runs in its own child process of this script (one library at
a time, so neither competes with the other for the cores); the rounds alternate
clip_jax and open_clip and the table shows each one's median over the rounds.
A measurement takes --warmup batches (open_clip: at least one per worker, so
every worker has started; clip_jax's first few batches come faster than its
steady rate, from buffers filled while the first one was compiled), then times
--batches batches:

- images/s: timed images / wall-clock seconds;
- per core: timed images / CPU-seconds (user + system) spent during the timed
  batches by every thread of the loader: for clip_jax its process (tf.data's
  threads included); for open_clip the main process (getrusage RUSAGE_SELF)
  plus its DataLoader worker processes (utime + stime from /proc/PID/stat, read
  before and after while they run: RUSAGE_CHILDREN only counts exited children
  and would add their start-up, warm-up and batches prefetched but never
  taken). Other load on the machine skews it much less than images/s, which
  also depends on the share of the cores each loader wins from that load;
- ratio: clip_jax / open_clip images/s (above 1: clip_jax is faster).

Two rows split clip_jax's pipeline into stages, one Python thread each: "read"
is the reader alone (tar parsing, shuffling, mixing; it reads a shuffle block
of 1000 records at once, so its rate is taken over about 10 blocks),
"tokenize" the tokenizer alone. The last line turns clip_jax's per-core rate
into the cores a training process needs to feed a step: see --global_batch,
--step_seconds, --processes.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from PIL import Image

MIN_PX, MAX_PX = 256, 512
SHUFFLE_BUFFER = 1000  # clip_jax: records per shuffled block, read in one go
READ_CHUNK = 64
READ_CHUNKS = 10 * SHUFFLE_BUFFER // READ_CHUNK  # the read stage's timed chunks: about 10 blocks
Result = dict[str, Any]  # a child's measurement, as its JSON line


def natural_image(rng: np.random.Generator) -> np.ndarray:
    """Smooth gradients, a few blobs and mild noise, each side in MIN_PX..MAX_PX: JPEG sizes like photos."""
    h, w = rng.integers(MIN_PX, MAX_PX + 1, 2)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    image = np.stack([rng.uniform(0, 255) + rng.uniform(-1, 1) * (x + y) / 4 for _ in range(3)], -1)
    for _ in range(6):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(10, min(h, w) / 3)
        image[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def make_vocabulary(rng: np.random.Generator, size: int = 3000) -> list[str]:
    syllables = ["ka", "lo", "mi", "ter", "an", "pho", "to", "graph", "ble", "rin", "so", "ve", "dar", "en", "ul"]
    return ["".join(rng.choice(syllables, rng.integers(1, 4))) for _ in range(size)]


def write_shards(directory: str, count: int, num_shards: int, seed: int = 0) -> list[str]:
    """img2dataset-style tar shards of `count` examples (jpg, txt, json per key); returns their paths."""
    rng = np.random.default_rng(seed)
    words = make_vocabulary(rng)
    zipf = 1.0 / np.arange(1, len(words) + 1)
    zipf /= zipf.sum()
    per_shard = -(-count // num_shards)
    paths = []
    for start in range(0, count, per_shard):
        paths.append(os.path.join(directory, f"{start // per_shard:05d}.tar"))
        with tarfile.open(paths[-1], "w") as tar:
            for i in range(start, min(start + per_shard, count)):
                buf = io.BytesIO()
                Image.fromarray(natural_image(rng)).save(buf, "JPEG", quality=95)
                caption = " ".join(rng.choice(words, rng.integers(5, 26), p=zipf)).encode()
                for ext, payload in (("jpg", buf.getvalue()), ("txt", caption), ("json", b"{}")):
                    info = tarfile.TarInfo(f"{i:09d}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return paths


def timed(fn: Callable[[], object], cpu_seconds: Callable[[], float]) -> tuple[float, float]:
    """(wall seconds, CPU seconds by `cpu_seconds`) that fn() takes."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    fn()
    return time.perf_counter() - wall, cpu_seconds() - cpu


# -- clip_jax (child process) --------------------------------------------------


def clip_jax_child(directory: str, args: argparse.Namespace) -> Result:
    import tensorflow as tf

    from clip_jax.data import Pipeline
    from clip_jax.data.producer import initial_state, produce

    pipe = Pipeline(
        f"wds:{directory}/*.tar", training=True, batch_size=args.batch_size, image_size=args.image_size,
        tokenizer="clip", process_index=0, process_count=1, shuffle_buffer=SHUFFLE_BUFFER,
        normalize=False,  # as training takes them: uint8 pixels, normalized by the step on the devices
    )
    stream = produce(
        pipe.sources, pipe.weights, seed=pipe.read.seed, stream_index=pipe.streams[0], epochs=None, training=True,
        num_captions=1, start=initial_state(pipe.sources), chunk_size=READ_CHUNK,
    )
    next(stream)
    read_seconds, _ = timed(lambda: [next(stream) for _ in range(READ_CHUNKS)], time.process_time)

    captions = [c.decode() for chunk in (next(stream) for _ in range(8)) for c in chunk[1][:, 0]]
    tokenize_seconds, _ = timed(lambda: [pipe.tokenizer(captions) for _ in range(4)], time.process_time)

    it = pipe.iterator()
    for _ in range(args.warmup):
        next(it)
    wall, cpu = timed(lambda: [next(it) for _ in range(args.batches)], time.process_time)
    n = args.batches * args.batch_size
    return {
        "images_per_s": n / wall, "per_core": n / cpu,
        "read": READ_CHUNKS * READ_CHUNK / read_seconds, "tokenize": 4 * len(captions) / tokenize_seconds,
        "versions": {"tensorflow": tf.__version__},
    }


# -- open_clip (child process, under --open_clip_python) -------------------------


def children_cpu_seconds() -> float:
    """utime + stime of this process's live child processes (the DataLoader's workers), from /proc."""
    total, me = 0, os.getpid()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # fields 3.. of proc(5); the name may hold spaces
        except OSError:  # exited meanwhile
            continue
        if int(fields[1]) == me:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def self_and_children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime + children_cpu_seconds()


def open_clip_loader(paths: list[str], args: argparse.Namespace) -> Iterable[tuple[Any, Any]]:
    """open_clip's training loader over `paths`, as `get_wds_dataset` in its training/data.py builds it."""
    import open_clip
    import webdataset as wds

    preprocess = open_clip.image_transform(args.image_size, is_train=True)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    dataset = wds.DataPipeline(
        wds.SimpleShardList(paths),
        wds.detshuffle(bufsize=2000, initial=500, seed=0),
        wds.split_by_node,
        wds.split_by_worker,
        wds.tarfile_to_samples(handler=wds.warn_and_continue),
        wds.shuffle(bufsize=5000, initial=1000),
        wds.select(lambda sample: "txt" in sample and any(k in sample for k in ("png", "jpg", "jpeg", "webp"))),
        wds.decode("pilrgb", handler=wds.warn_and_continue),
        wds.rename(image="jpg;png;jpeg;webp", text="txt"),
        wds.map_dict(image=preprocess, text=lambda text: tokenizer(text)[0]),
        wds.to_tuple("image", "text"),
        wds.batched(args.batch_size, partial=False),
    ).with_epoch(sys.maxsize)  # open_clip: batches per worker per epoch; here the timed run never ends an epoch
    workers = args.open_clip_workers
    return wds.WebLoader(dataset, batch_size=None, shuffle=False, num_workers=workers, persistent_workers=workers > 0)


def open_clip_child(directory: str, args: argparse.Namespace) -> Result:
    import open_clip
    import PIL
    import torch
    import webdataset

    paths = sorted(os.path.join(directory, name) for name in os.listdir(directory) if name.endswith(".tar"))
    it = iter(open_clip_loader(paths, args))
    for _ in range(max(args.warmup, args.open_clip_workers)):
        next(it)
    wall, cpu = timed(lambda: [next(it) for _ in range(args.batches)], self_and_children_cpu_seconds)
    n = args.batches * args.batch_size
    return {
        "images_per_s": n / wall, "per_core": n / cpu,
        "versions": {"torch": torch.__version__, "open_clip": open_clip.__version__,
                     "webdataset": webdataset.__version__, "PIL": PIL.__version__},
    }


# -- driver ----------------------------------------------------------------------


def measure(python: str, flag: str, directory: str, args: argparse.Namespace) -> Result:
    """One measurement in a fresh child process of this script; its JSON result."""
    command = [python, os.path.abspath(__file__), flag, directory, "--batch_size", str(args.batch_size),
               "--batches", str(args.batches), "--warmup", str(args.warmup), "--image_size", str(args.image_size),
               "--open_clip_workers", str(args.open_clip_workers)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def open_clip_problem(python: str) -> str | None:
    """Why `python` cannot run the open_clip side, with how to fix it; None if it can."""
    try:
        result = subprocess.run([python, "-c", "import open_clip, torch, webdataset"], capture_output=True, text=True)
    except FileNotFoundError:
        return (f"open_clip row skipped: no interpreter {python}; make one with `python -m venv DIR && "
                "DIR/bin/pip install open_clip_torch webdataset` and pass --open_clip_python DIR/bin/python")
    if result.returncode:
        error = result.stderr.strip().splitlines()[-1]
        return (f"open_clip row skipped: {python} cannot import open_clip, torch and webdataset ({error}); "
                f"install them with `{python} -m pip install open_clip_torch webdataset`")
    return None


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown CPU")


def median(results: list[Result], key: str) -> float:
    return statistics.median(r[key] for r in results)


def row(loader: str, *cells: str) -> str:
    return "| " + " | ".join((loader, *cells)) + " |"


def report(args: argparse.Namespace, num_shards: int, ours: list[Result],
           theirs: list[Result], skipped: str | None) -> None:
    versions = "; ".join(
        f"{name}: " + ", ".join(f"{k} {v}" for k, v in results[0]["versions"].items())
        for name, results in (("clip_jax", ours), ("open_clip", theirs)) if results
    )
    print(f"\n{args.image_size} px training crops + CLIP tokens from {args.images} JPEGs of {MIN_PX}-{MAX_PX} px "
          f"a side (quality 95) in {num_shards} webdataset shards, batch {args.batch_size}; "
          f"{args.batches} timed batches, median of {args.rounds} alternating rounds")
    print(f"machine: {len(os.sched_getaffinity(0))} cores, {cpu_model()}; {versions}\n")
    print(row("loader", "images/s", "per core", "ratio") + "\n| --- | ---: | ---: | ---: |")
    rate, per_core = median(ours, "images_per_s"), median(ours, "per_core")
    clip_jax_loader = "clip_jax: tf.data Pipeline, read+decode+crop+resize+tokenize"
    if skipped:
        print(row(clip_jax_loader, f"{rate:.0f}", f"{per_core:.0f}", "-"))
        print(row("open_clip: webdataset WebLoader", "skipped", "-", "-"))
    else:
        their_rate, their_per_core = median(theirs, "images_per_s"), median(theirs, "per_core")
        print(row(clip_jax_loader, f"{rate:.0f}", f"{per_core:.0f}", f"{rate / their_rate:.2f}"))
        print(row(f"open_clip: webdataset WebLoader, {args.open_clip_workers} workers",
                  f"{their_rate:.0f}", f"{their_per_core:.0f}", "1.00"))
    print(row("clip_jax stage: read + shuffle (Python, one thread)", f"{median(ours, 'read'):.0f}", "-", "-"))
    print(row("clip_jax stage: tokenize (Python, one thread)", f"{median(ours, 'tokenize'):.0f}", "-", "-"))
    if skipped:
        print(f"\n{skipped}")
    else:
        print(f"\nclip_jax / open_clip per core: {per_core / their_per_core:.2f}")
    needed = args.global_batch / args.step_seconds / args.processes
    print(f"needed: global batch {args.global_batch} every {args.step_seconds:g} s over {args.processes} processes"
          f" = {needed:.0f} images/s per process -> {needed / per_core:.1f} clip_jax cores per process")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2048, help="distinct images written to the shards")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=64, help="loader batch")
    parser.add_argument("--batches", type=int, default=24, help="timed batches")
    parser.add_argument("--warmup", type=int, default=8,
                        help="untimed batches first (open_clip: at least one per worker)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating measurements of each library")
    parser.add_argument("--open_clip_python", default="/tmp/ocvenv/bin/python",
                        help="interpreter with torch, open_clip and webdataset")
    parser.add_argument("--open_clip_workers", type=int, default=len(os.sched_getaffinity(0)),
                        help="DataLoader workers (default: the cores this process may use)")
    parser.add_argument("--global_batch", type=int, default=32768, help="training batch over all processes")
    parser.add_argument("--step_seconds", type=float, default=1.0, help="training step time to feed")
    parser.add_argument("--processes", type=int, default=64, help="hosts sharing the global batch")
    parser.add_argument("--_clip_jax_child", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--_open_clip_child", metavar="DIR", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args._clip_jax_child or args._open_clip_child:
        child = clip_jax_child if args._clip_jax_child else open_clip_child
        print(json.dumps(child(args._clip_jax_child or args._open_clip_child, args)))
        return
    skipped = open_clip_problem(args.open_clip_python)
    if skipped:
        print(skipped)
    ours: list[Result] = []
    theirs: list[Result] = []
    with tempfile.TemporaryDirectory() as directory:
        shards = write_shards(directory, args.images, max(8, args.open_clip_workers))  # open_clip: >= 1 per worker
        for i in range(args.rounds):
            ours.append(measure(sys.executable, "--_clip_jax_child", directory, args))
            rounds = {"clip_jax": ours[-1]}
            if not skipped:
                theirs.append(measure(args.open_clip_python, "--_open_clip_child", directory, args))
                rounds["open_clip"] = theirs[-1]
            print(f"round {i + 1}/{args.rounds}: " + "; ".join(
                f"{name} {r['images_per_s']:.0f} images/s, {r['per_core']:.0f} per core" for name, r in rounds.items()
            ), flush=True)
    report(args, len(shards), ours, theirs, skipped)


if __name__ == "__main__":
    main()
