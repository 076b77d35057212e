"""Metric writers (clu: logging + TensorBoard + metrics.jsonl) and model FLOPs utilisation."""
from __future__ import annotations

import contextlib
import json
from typing import Any, Mapping

import jax
from clu import metric_writers
from etils import epath

from clip_jax.runtime import paths

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
    """Appends one JSON object per write_scalars call to `path`: {"step": s, name: value, ...}.

    Each write is flushed, so the file is complete up to the last write; in a
    bucket (gs://...) a flush re-uploads the object.
    """

    def __init__(self, path: epath.PathLike):
        self._closer = contextlib.ExitStack()  # epath opens bucket files as context managers only
        self._file = self._closer.enter_context(epath.Path(path).open("a", encoding="utf-8"))

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
        self._closer.close()


def create_writer(workdir: epath.PathLike) -> metric_writers.MetricWriter:
    """Process 0 logs, writes TensorBoard events and WORKDIR/metrics.jsonl; other processes only log."""
    if jax.process_index() > 0:
        return metric_writers.create_default_writer(just_logging=True, asynchronous=False)
    directory = paths.resolve(workdir)
    directory.mkdir(parents=True, exist_ok=True)
    default = metric_writers.create_default_writer(str(directory), asynchronous=False)
    return metric_writers.MultiWriter([default, JsonlWriter(directory / "metrics.jsonl")])


def peak_flops_per_device(device: jax.Device) -> float | None:
    """The device's dense bf16 peak FLOP/s where known (None on CPUs and unknown parts)."""
    kind = getattr(device, "device_kind", "")
    return next((flops for name, flops in PEAK_FLOPS if name in kind), None)

