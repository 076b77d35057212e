"""Eval results in CLIP_benchmark's vocabulary: metric names, task names, JSON records, a table.

clip_jax's metrics (`run_eval`) are named as they are logged in training
(`top1`, `i2t_R@5`, ...). For results meant to sit next to CLIP_benchmark's,
`clip_benchmark_record` renames them as it does:

    zeroshot:     top1 -> acc1, top5 -> acc5, mean_per_class_recall
    retrieval:    t2i_R@k -> image_retrieval_recall@k (a caption finds its image),
                  i2t_R@k -> text_retrieval_recall@k (an image finds one of its captions)
    linear_probe: top1 -> lp_acc1 (other outputs, e.g. the chosen L2 strength, keep their names)
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

TASKS = {"zeroshot": "zeroshot_classification", "retrieval": "zeroshot_retrieval", "linear_probe": "linear_probe"}
_RENAMES = {
    "zeroshot": {"top1": "acc1", "top5": "acc5"},
    "linear_probe": {"top1": "lp_acc1", "top5": "lp_acc5", "mean_per_class_recall": "lp_mean_per_class_recall"},
}
_RECALL = re.compile(r"(i2t|t2i)_R@(\d+)")


def clip_benchmark_name(eval_type: str, metric: str) -> str:
    """A clip_jax metric's name in CLIP_benchmark's results, e.g. ("retrieval", "t2i_R@5") -> "image_retrieval_recall@5"."""
    if eval_type == "retrieval" and (match := _RECALL.fullmatch(metric)):
        direction, k = match.groups()
        return f"{'image' if direction == 't2i' else 'text'}_retrieval_recall@{k}"
    return _RENAMES.get(eval_type, {}).get(metric, metric)


def clip_benchmark_record(
    dataset: str, eval_type: str, metrics: Mapping[str, float], model: str, pretrained: str
) -> dict[str, Any]:
    """One result as CLIP_benchmark writes it: dataset, model, pretrained, task, metrics, language."""
    return {
        "dataset": dataset,
        "model": model,
        "pretrained": pretrained,
        "task": TASKS[eval_type],
        "metrics": {clip_benchmark_name(eval_type, k): float(v) for k, v in metrics.items()},
        "language": "en",
    }


def format_table(records: Sequence[Mapping[str, Any]]) -> str:
    """Records -> a plain-text table, one row per (dataset, metric), values as percentages."""
    rows = [("dataset", "task", "metric", "value")]
    for record in records:
        for name, value in record["metrics"].items():
            shown = f"{100 * value:.2f}" if _is_fraction(name) else f"{value:.4g}"
            rows.append((record["dataset"], record["task"], name, shown))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _is_fraction(metric: str) -> bool:
    return "acc" in metric or "recall" in metric or "top" in metric
