"""Metric writers (clu: logging + TensorBoard + metrics.jsonl) and model FLOPs utilisation."""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
from clu import metric_writers

# Dense bfloat16 peak FLOP/s per device, by a substring of jax's device_kind.
PEAK_FLOPS = (
    ("H200", 989e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L4", 121e12),
    ("TPU v6", 918e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v5", 459e12),
    ("TPU v4", 275e12),
    ("TPU v3", 123e12),
)


class JsonlWriter(metric_writers.MetricWriter):
    """Appends one JSON object per write_scalars call to `path`: {"step": s, name: value, ...}."""

    def __init__(self, path: str):
        self._file = open(path, "a", encoding="utf-8")

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        self._file.write(json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}) + "\n")
        self._file.flush()

    def write_summaries(self, step, values, metadata=None) -> None:
        pass

    def write_images(self, step, images) -> None:
        pass

    def write_videos(self, step, videos) -> None:
        pass

    def write_audios(self, step, audios, *, sample_rate) -> None:
        pass

    def write_texts(self, step, texts) -> None:
        pass

    def write_histograms(self, step, arrays, num_buckets=None) -> None:
        pass

    def write_hparams(self, hparams) -> None:
        pass

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def create_writer(workdir: str) -> metric_writers.MetricWriter:
    """Process 0 logs, writes TensorBoard events and WORKDIR/metrics.jsonl; other processes only log."""
    if jax.process_index() > 0:
        return metric_writers.create_default_writer(just_logging=True, asynchronous=False)
    os.makedirs(workdir, exist_ok=True)
    default = metric_writers.create_default_writer(workdir, asynchronous=False)
    return metric_writers.MultiWriter([default, JsonlWriter(os.path.join(workdir, "metrics.jsonl"))])


def peak_flops_per_device(device: jax.Device) -> float | None:
    """The device's dense bf16 peak FLOP/s where known (None on CPUs and unknown parts)."""
    kind = getattr(device, "device_kind", "")
    return next((flops for name, flops in PEAK_FLOPS if name in kind), None)

