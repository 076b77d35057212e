"""The training loop: state, sharded step, input pipeline, checkpoints, logging, evals.

    train_and_evaluate(config, workdir)

Starts from the newest complete checkpoint in WORKDIR/checkpoints if there is
one (state and data position: the run continues as if never stopped), else
from `config.init_from` weights or a fresh initialisation. Saves every
`checkpoint_every_steps`, at the end, and when the process gets SIGTERM
(preemption), then exits cleanly.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
from typing import Any, Callable

import jax
import ml_collections
from flax import traverse_util
import numpy as np
from clu import parameter_overview, periodic_actions
from jax.experimental import multihost_utils

from clip_jax import checkpointing, data, evaluation, metric_logging, sharding, train_step, weights
from clip_jax.config import validate
from clip_jax.convert import stack_layers, unstack_layers
from clip_jax.models import CLIP, create_model
from clip_jax.tokenizers import get_tokenizer

log = logging.getLogger("clip_jax.train")


def build_model(config: ml_collections.ConfigDict) -> tuple[CLIP, dict[str, Any]]:
    """(model, the create_model overrides that define it) from the config.

    With a tokenizer other than CLIP's BPE (a SentencePiece model), the text
    tower takes that vocabulary's size and pools at the last non-pad token,
    unless config.model_overrides.text says otherwise.
    """
    overrides = {
        "dtype": config.dtype,
        "remat_policy": config.remat_policy,
        "scan_layers": config.scan_layers,
        **config.model_overrides.to_dict(),
    }
    if config.data.tokenizer != "clip":
        vocab_size = get_tokenizer(config.data.tokenizer, config.data.context_length).vocab_size
        overrides["text"] = {"vocab_size": vocab_size, "pool_type": "last", **overrides.get("text", {})}
    return create_model(config.model, **overrides), overrides


class Preemption:
    """Turns SIGTERM into a flag the loop checks between steps (agreed on by every process)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning("SIGTERM: saving a checkpoint and stopping after this step")
        self.requested = True

    def should_stop(self) -> bool:
        if jax.process_count() == 1:
            return self.requested
        return bool(multihost_utils.process_allgather(np.array(self.requested)).any())

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def _load_init_weights(path: str, state: dict[str, Any], shardings: dict[str, Any]) -> dict[str, Any]:
    """Replaces params (and batch_stats) with converted weights or another run's newest checkpoint.

    Layer stacks are converted between the scanned and the plain layout as the model needs.
    """
    run_checkpoints = os.path.join(path, "checkpoints")
    variables, _ = weights.load_variables(run_checkpoints if os.path.isdir(run_checkpoints) else path)
    expected = jax.tree.map(lambda x: x.shape, {k: state[k] for k in ("params", "batch_stats")})
    for layout in (lambda v: v, stack_layers, unstack_layers):
        candidate = {k: layout(variables.get(k, {})) for k in ("params", "batch_stats")}
        if jax.tree.map(lambda x: x.shape, candidate) == expected:
            break
    else:
        want = traverse_util.flatten_dict(expected, sep="/")
        found = traverse_util.flatten_dict(jax.tree.map(lambda x: x.shape, variables), sep="/")
        differ = sorted(k for k in want.keys() | found.keys() if want.get(k) != found.get(k))
        raise ValueError(f"config.init_from: the parameters in {path} do not fit the model; they differ at {differ[:6]}")
    for collection, values in candidate.items():
        state[collection] = jax.device_put(jax.tree.map(lambda x: np.asarray(x, np.float32), values), shardings[collection])
    log.info("initialised parameters from %s", path)
    return state


def make_encoders(model: CLIP, batch_sharding: Any) -> tuple[Callable, Callable]:
    """(encode_image, encode_text) factories: variables -> fn(numpy [B, ...], the same on every host) -> numpy [B, E].

    Each host passes the same whole batch; the devices split it over the batch
    axes and every host gets all embeddings back, so multi-host evals agree.
    """
    encode_image = jax.jit(lambda v, x: model.apply(v, x, method=model.encode_image))
    encode_text = jax.jit(lambda v, t: model.apply(v, t, method=model.encode_text))

    mesh = batch_sharding.mesh
    shards = mesh.shape["data"] * mesh.shape["fsdp"]

    def bind(fn: Callable) -> Callable:
        def factory(variables: dict[str, Any]) -> Callable:
            def encode(x: np.ndarray) -> np.ndarray:
                x = np.asarray(x)
                rows = len(x)
                x = np.concatenate([x, np.repeat(x[-1:], -rows % shards, axis=0)])  # a multiple of the shards
                global_x = jax.make_array_from_callback(x.shape, batch_sharding, lambda index: x[index])
                return np.asarray(multihost_utils.process_allgather(fn(variables, global_x), tiled=True))[:rows]

            return encode

        return factory

    return bind(encode_image), bind(encode_text)


@dataclasses.dataclass
class EvalTask:
    """One entry of config.evals with what it needs to run.

    Every host reads the whole eval set (process_count=1), so the evaluator
    sees the same batches everywhere and the metrics need no gathering.
    """

    name: str
    spec: ml_collections.ConfigDict

    def pipeline(self, config: ml_collections.ConfigDict, image_size: int, source: str, labels: bool) -> data.Pipeline:
        return data.Pipeline(
            source,
            training=False,
            batch_size=self.spec.get("batch_size", 256),
            image_size=image_size,
            tokenizer=config.data.tokenizer,
            context_length=config.data.context_length,
            labels=labels,
            text=self.spec.type == "retrieval",
            num_captions=self.spec.get("num_captions", 1),
            process_index=0,
            process_count=1,
        )


def run_evals(
    tasks: list[EvalTask], step: int, config: ml_collections.ConfigDict, image_size: int, variables: dict[str, Any],
    encoders: tuple[Callable, Callable], force: bool = False,
) -> dict[str, float]:
    """Runs the evals due at `step` (all of them when `force`); metrics as '<name>/<metric>'."""
    results: dict[str, float] = {}
    encode_image, encode_text = (factory(variables) for factory in encoders)
    for task in tasks:
        if not force and step % task.spec.every_steps:
            continue
        start = time.perf_counter()
        labels = task.spec.type in ("zeroshot", "linear_probe")
        batches = task.pipeline(config, image_size, task.spec.data, labels).iterator()
        train_batches = None
        if task.spec.type == "linear_probe":
            train_batches = task.pipeline(config, image_size, task.spec.train_data, True).iterator()
        metrics = evaluation.run_eval(
            task.spec.type,
            encode_image=encode_image,
            encode_text=encode_text,
            tokenizer=get_tokenizer(config.data.tokenizer, config.data.context_length),
            batches=batches,
            classnames=task.spec.get("classnames"),
            templates=task.spec.get("templates"),
            train_batches=train_batches,
        )
        results.update({f"{task.name}/{k}": v for k, v in metrics.items()})
        log.info("eval %s at step %d: %s (%.1f s)", task.name, step, metrics, time.perf_counter() - start)
    return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains to config.total_steps (resuming from WORKDIR) and returns the final state."""
    validate(config)
    os.makedirs(workdir, exist_ok=True)
    mesh = sharding.make_mesh(config.mesh)
    model, overrides = build_model(config)
    image_size = model.visual.image_size
    if config.data.context_length > model.text.context_length:
        raise ValueError(
            f"config.data.context_length {config.data.context_length} exceeds the model's {model.text.context_length}"
        )
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if config.batch_size % jax.process_count() or (config.batch_size // config.num_microbatches) % shards:
        raise ValueError(
            f"config.batch_size {config.batch_size} must split into {config.num_microbatches} micro-batches "
            f"over {shards} batch shards and {jax.process_count()} processes"
        )
    rng = jax.random.key(config.seed)
    compiled = train_step.compile_training(model, config, mesh, rng)
    checkpointer = checkpointing.Checkpointer(workdir, config.keep_checkpoints)
    metadata = {"model": config.model, "overrides": overrides, "seed": config.seed}
    pipeline = data.Pipeline(
        config.data.train,
        training=True,
        batch_size=config.batch_size // jax.process_count(),
        image_size=image_size,
        tokenizer=config.data.tokenizer,
        context_length=config.data.context_length,
        seed=config.seed,
        crop_scale=(config.data.min_crop_scale, 1.0),
        shuffle_buffer=config.data.shuffle_buffer,
        resample=config.data.resample,
    )
    latest = checkpointer.latest_step()
    if latest is not None:
        state, data_state = checkpointer.restore(latest, compiled.abstract_state)
        log.info("resumed from step %d in %s", latest, checkpointer.directory)
    else:
        state, data_state = compiled.init(rng), None
        if config.init_from:
            state = _load_init_weights(config.init_from, state, train_step.state_shardings(compiled.abstract_state))
    batch_sharding = sharding.batch_sharding(mesh)
    batches = data.DevicePrefetcher(pipeline.iterator(data_state), batch_sharding)

    writer = metric_logging.create_writer(workdir)
    if jax.process_index() == 0:
        parameter_overview.log_parameter_overview(state["params"])
    peak = metric_logging.peak_flops_per_device(jax.devices()[0])
    model_flops = train_step.model_flops_per_step(model, config, mesh, compiled.abstract_batch) if peak else None
    eval_tasks = [EvalTask(name, spec) for name, spec in config.evals.items()]
    encoders = make_encoders(model, batch_sharding)

    step = int(state["step"])
    progress = periodic_actions.ReportProgress(
        num_train_steps=config.total_steps, writer=writer, every_secs=config.progress_every_seconds
    )
    preemption = Preemption()
    window_start, window_steps = time.perf_counter(), 0
    log.info("training %s from step %d to %d on %s", config.model, step, config.total_steps, mesh)
    try:
        while step < config.total_steps:
            batch = next(batches)
            state, metrics = compiled.step(state, {"images": batch["images"], "tokens": batch["tokens"]})
            step += 1
            window_steps += 1
            progress(step)
            if step % config.log_every_steps == 0 or step == config.total_steps:
                scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
                seconds = (time.perf_counter() - window_start) / window_steps
                scalars.update(step_time=seconds, samples_per_second=config.batch_size / seconds)
                if model_flops:
                    scalars["mfu"] = model_flops / seconds / (peak * jax.device_count())
                scalars.update({f"data/skipped_{k}": v for k, v in batches.error_counts().items()})
                writer.write_scalars(step, scalars)
                window_start, window_steps = time.perf_counter(), 0
            stopping = preemption.should_stop()
            variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
            eval_results = run_evals(
                eval_tasks, step, config, image_size, variables, encoders, force=step == config.total_steps,
            ) if eval_tasks and not stopping else {}
            if eval_results:
                writer.write_scalars(step, eval_results)
            if step % config.checkpoint_every_steps == 0 or step == config.total_steps or stopping:
                checkpointer.save(step, state, batches.get_state(), metadata)
            if stopping:
                break
    finally:
        checkpointer.wait()
        checkpointer.close()
        writer.flush()
        preemption.restore()
    return state

