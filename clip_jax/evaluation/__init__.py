"""Evaluations of image-text models on plain iterables of numpy batch dicts.

    from clip_jax import evaluation
    metrics = evaluation.run_eval("zeroshot", encode_image=..., encode_text=...,
                                  tokenizer=..., batches=..., classnames=[...])
    # {"top1": ..., "top5": ..., "mean_per_class_recall": ...}

The linear probe is CLIP's (appendix A.3): L-BFGS logistic regression with the
L2 strength chosen by a binary search over 10^-6 .. 10^6 on a validation split,
then refitted on train + validation (see linear_probe).

Independent of the data pipeline and the train loop: encoders are callables
(numpy batch -> [B, E]), batches are dicts of numpy arrays (see evaluator).
`clip_jax.evaluation.in_loop` runs them inside training, each process reading
its share of an eval set; it imports the data pipeline, so not from here.
"""
from clip_jax.evaluation.batching import BatchedEncoder
from clip_jax.evaluation.benchmarks import Benchmark, UnknownBenchmarkError, benchmark, find_benchmark, list_benchmarks
from clip_jax.evaluation.captioning import bleu, captioning_metrics, cider, tokenize_caption
from clip_jax.evaluation.evaluator import EVAL_TYPES, embed_images, embed_retrieval, embed_texts, run_eval
from clip_jax.evaluation.linear_probe import linear_probe
from clip_jax.evaluation.ranking import positive_ranks, recall_at_k
from clip_jax.evaluation.retrieval import retrieval_metrics
from clip_jax.evaluation.templates import DEFAULT_TEMPLATES, OPENAI_IMAGENET_TEMPLATES, TEMPLATE_SETS, get_templates
from clip_jax.evaluation.zeroshot import zeroshot_classifier, zeroshot_metrics

__all__ = [
    "DEFAULT_TEMPLATES",
    "EVAL_TYPES",
    "OPENAI_IMAGENET_TEMPLATES",
    "TEMPLATE_SETS",
    "BatchedEncoder",
    "Benchmark",
    "UnknownBenchmarkError",
    "benchmark",
    "bleu",
    "captioning_metrics",
    "cider",
    "embed_images",
    "embed_retrieval",
    "embed_texts",
    "find_benchmark",
    "get_templates",
    "linear_probe",
    "list_benchmarks",
    "positive_ranks",
    "recall_at_k",
    "retrieval_metrics",
    "run_eval",
    "tokenize_caption",
    "zeroshot_classifier",
    "zeroshot_metrics",
]
