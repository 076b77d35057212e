"""Input pipeline throughput: images/s (and per core) through decode + augment + tokenize.

Writes img2dataset-like webdataset shards (JPEG quality 95, short side 256,
captions of 5-25 words) to a temp dir, runs the training pipeline at 224 px
with the CLIP tokenizer, and prints a table with the rate a training step
needs:

    python benchmarks/input_pipeline.py --global_batch 32768 --step_seconds 1.0 --processes 64

Stages: "read" is the Python reader alone (tar parsing, shuffling, mixing),
"tokenize" the tokenizer alone, "full" the whole pipeline as training uses it.
"""
from __future__ import annotations

import argparse
import io
import os
import tarfile
import tempfile
import time

import numpy as np
from PIL import Image

from clip_jax.data import Pipeline
from clip_jax.data.producer import initial_state, produce


def natural_image(rng: np.random.Generator, short: int) -> np.ndarray:
    """Smooth gradients, a few blobs and mild noise: JPEG sizes like photos (~20-40 KB at 256 px)."""
    long = int(short * rng.uniform(1.0, 1.5))
    h, w = (short, long) if rng.random() < 0.7 else (long, short)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    image = np.stack([rng.uniform(0, 255) + rng.uniform(-1, 1) * (x + y) / 4 for _ in range(3)], -1)
    for _ in range(6):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(10, short / 3)
        image[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def make_vocabulary(rng: np.random.Generator, size: int = 3000) -> list[str]:
    syllables = ["ka", "lo", "mi", "ter", "an", "pho", "to", "graph", "ble", "rin", "so", "ve", "dar", "en", "ul"]
    return ["".join(rng.choice(syllables, rng.integers(1, 4))) for _ in range(size)]


def write_shards(directory: str, count: int, per_shard: int, short: int, seed: int = 0) -> str:
    """img2dataset-style tar shards; returns the source string."""
    rng = np.random.default_rng(seed)
    words = make_vocabulary(rng)
    zipf = 1.0 / np.arange(1, len(words) + 1)
    zipf /= zipf.sum()
    for start in range(0, count, per_shard):
        with tarfile.open(os.path.join(directory, f"{start // per_shard:05d}.tar"), "w") as tar:
            for i in range(start, min(start + per_shard, count)):
                buf = io.BytesIO()
                Image.fromarray(natural_image(rng, short)).save(buf, "JPEG", quality=95)
                caption = " ".join(rng.choice(words, rng.integers(5, 26), p=zipf)).encode()
                for ext, payload in (("jpg", buf.getvalue()), ("txt", caption), ("json", b"{}")):
                    info = tarfile.TarInfo(f"{i:09d}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return f"wds:{directory}/*.tar"


def rate(fn, n: int) -> tuple[float, float]:
    """(items per wall-clock second, items per CPU-second of this process, all threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return n / (time.perf_counter() - wall), n / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1024, help="distinct images written to the shards")
    parser.add_argument("--source_px", type=int, default=256, help="short side of the stored JPEGs")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=128, help="per-process pipeline batch")
    parser.add_argument("--batches", type=int, default=24, help="timed batches (after 4 warm-up batches)")
    parser.add_argument("--tokenizer", default="clip")
    parser.add_argument("--global_batch", type=int, default=32768, help="training batch over all processes")
    parser.add_argument("--step_seconds", type=float, default=1.0, help="training step time to feed")
    parser.add_argument("--processes", type=int, default=64, help="hosts sharing the global batch")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))

    with tempfile.TemporaryDirectory() as directory:
        source = write_shards(directory, args.images, per_shard=256, short=args.source_px)
        pipe = Pipeline(
            source, training=True, batch_size=args.batch_size, image_size=args.image_size,
            tokenizer=args.tokenizer, process_index=0, process_count=1, shuffle_buffer=1000,
        )
        n = args.batches * args.batch_size

        stream = produce(
            pipe.sources, pipe.weights, seed=0, epochs=None, training=True, num_captions=1,
            start=initial_state(pipe.sources), chunk_size=64,
        )
        next(stream)
        chunks = n // 64
        read_rate, _ = rate(lambda: [next(stream) for _ in range(chunks)], chunks * 64)

        captions = [c.decode() for chunk in (next(stream) for _ in range(8)) for c in chunk[1][:, 0]]
        tokenize_rate, _ = rate(lambda: [pipe.tokenizer(captions) for _ in range(4)], 4 * len(captions))

        it = pipe.iterator()
        for _ in range(4):
            next(it)
        full_rate, per_core = rate(lambda: [next(it) for _ in range(args.batches)], n)

    needed = args.global_batch / args.step_seconds / args.processes
    print(f"\ninput pipeline, {args.image_size} px training crops from {args.source_px} px JPEG shards, "
          f"tokenizer {args.tokenizer!r}, batch {args.batch_size}, {cores} cores")
    print(f"{'stage':<44}{'images/s':>10}{'per core':>10}")
    print(f"{'read + shuffle (Python, one thread)':<44}{read_rate:>10.0f}{'-':>10}")
    print(f"{'tokenize (Python, one thread)':<44}{tokenize_rate:>10.0f}{'-':>10}")
    print(f"{'full: read+decode+crop+resize+tokenize':<44}{full_rate:>10.0f}{per_core:>10.0f}")
    print("(per core: images per CPU-second used by this process, so other load on the machine does not skew it)")
    print(f"\nneeded: global batch {args.global_batch} every {args.step_seconds:g} s over {args.processes} processes"
          f" = {needed:.0f} images/s per process -> {needed / per_core:.1f} cores per process")


if __name__ == "__main__":
    main()
