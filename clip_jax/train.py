"""The training loop: state, sharded step, input pipeline, checkpoints, logging, evals.

    train_and_evaluate(config, workdir)

Starts from the newest complete checkpoint in WORKDIR/checkpoints if there is
one (state and data position: the run continues as if never stopped), else
from `config.init_from` weights or a fresh initialisation. Saves every
`checkpoint_every_steps`, at the end, and when the process gets SIGTERM
(preemption), then exits cleanly.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import jax
import ml_collections
from flax import traverse_util
import numpy as np
from clu import parameter_overview, periodic_actions

from clip_jax import checkpointing, data, flops, metric_logging, multihost, paths, sharding, train_state, train_step, weights
from clip_jax.config import ConfigError, validate
from clip_jax.convert import stack_layers, unstack_layers
from clip_jax.evaluation.in_loop import EvalTask, make_encoders, run_evals
from clip_jax.model_config import model_from_config

log = logging.getLogger("clip_jax.train")


def _load_init_weights(path: str, state: dict[str, Any], shardings: dict[str, Any]) -> dict[str, Any]:
    """Replaces params (and batch_stats) with converted weights or another run's newest checkpoint.

    Layer stacks are converted between the scanned and the plain layout as the model needs;
    a logit scale or bias the weights lack (CLIP weights for a SigLIP run) keeps its initial value.
    """
    run_checkpoints = paths.resolve(path) / "checkpoints"
    variables, _ = weights.load_variables(run_checkpoints if run_checkpoints.is_dir() else path)
    params = variables.get("params", {})
    missing = [k for k in train_step.scalar_params(state["params"]) if k not in params]
    if missing:  # e.g. CLIP weights for a SigLIP run: the loss's own scalars keep their initial values
        variables = {**variables, "params": {**params, **jax.device_get({k: state["params"][k] for k in missing})}}
        log.info("init_from: %s has no %s; starting them from the config's init", path, missing)
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains to config.total_steps (resuming from WORKDIR) and returns the final state."""
    validate(config)
    paths.resolve(workdir).mkdir(parents=True, exist_ok=True)
    mesh = sharding.make_mesh(config.mesh)
    model, overrides = model_from_config(config)
    image_size = model.visual.image_size
    if config.data.context_length > model.text.context_length:
        raise ValueError(
            f"config.data.context_length {config.data.context_length} exceeds the model's {model.text.context_length}"
        )
    checkpointer = checkpointing.Checkpointer(workdir, config.keep_checkpoints)
    latest = checkpointer.latest_step()
    data_state = checkpointer.restore_data(latest) if latest is not None else None
    pipeline = open_training_data(config, image_size, data_state)  # before compiling: a missing source fails fast
    rng = jax.random.key(config.seed)
    compiled = train_step.compile_training(model, config, mesh, rng)
    metadata = {"model": config.model, "overrides": overrides, "seed": config.seed}
    if latest is not None:
        state = checkpointer.restore(latest, compiled.abstract_state)
        log.info("resumed from step %d in %s", latest, checkpointer.directory)
    else:
        state = compiled.init(rng)
        if config.init_from:
            state = _load_init_weights(config.init_from, state, train_state.state_shardings(compiled.abstract_state))
    batch_sharding = sharding.batch_sharding(mesh)
    batches = data.DevicePrefetcher(pipeline.iterator(data_state), batch_sharding)

    writer = metric_logging.create_writer(workdir)
    if jax.process_index() == 0:  # from shapes: parameters sharded over hosts are not all addressable here
        parameter_overview.log_parameter_overview(compiled.abstract_state["params"], include_stats=False)
    peak = metric_logging.peak_flops_per_device(jax.devices()[0])
    model_flops = flops.model_flops_per_step(model, config, mesh, compiled.abstract_batch) if peak else None
    eval_tasks = [EvalTask(name, spec) for name, spec in config.evals.items()]
    encoders = make_encoders(model, batch_sharding)

    step = int(state["step"])
    progress = periodic_actions.ReportProgress(
        num_train_steps=config.total_steps, writer=writer, every_secs=config.progress_every_seconds
    )
    preemption = multihost.Preemption()
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
                skipped = multihost.sum_over_processes(batches.error_counts())
                scalars.update({f"data/skipped_{k}": v for k, v in skipped.items()})
                writer.write_scalars(step, scalars)
                window_start, window_steps = time.perf_counter(), 0
            stopping = preemption.should_stop(step)
            variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
            eval_results = run_evals(
                eval_tasks, step, config, image_size, variables, encoders, force=step == config.total_steps,
            ) if eval_tasks and not stopping else {}
            if eval_results:
                writer.write_scalars(step, eval_results)
            if step % config.checkpoint_every_steps == 0 or step == config.total_steps or stopping:
                data_state = data.merge_states(multihost.allgather_json(batches.get_state()))
                checkpointer.save(step, state, data_state, metadata)
            if stopping:
                break
    finally:
        checkpointer.wait()
        checkpointer.close()
        writer.flush()
        preemption.restore()
    return state


def open_training_data(
    config: ml_collections.ConfigDict, image_size: int, data_state: dict[str, Any] | None
) -> data.Pipeline:
    """This process's training input pipeline; a source that is missing or empty is a ConfigError naming the flag."""
    try:
        return data.Pipeline(
            config.data.train,
            training=True,
            batch_size=config.batch_size // jax.process_count(),
            image_size=image_size,
            tokenizer=config.data.tokenizer,
            context_length=config.data.context_length,
            seed=config.seed,
            num_streams=num_data_streams(config, data_state),
            crop_scale=(config.data.min_crop_scale, 1.0),
            shuffle_buffer=config.data.shuffle_buffer,
            resample=config.data.resample,
        )
    except (FileNotFoundError, data.NoValidDataError) as e:
        raise ConfigError(f"config.data.train: {e}; set the training data with --config.data.train=SOURCE") from None


def num_data_streams(config: ml_collections.ConfigDict, data_state: dict[str, Any] | None) -> int:
    """config.data.num_streams; 0 means one per process of the run that started it (kept on resume)."""
    streams = config.data.num_streams or (data_state or {}).get("fingerprint", {}).get("num_streams") or jax.process_count()
    if streams % jax.process_count() or config.batch_size % streams:
        raise ValueError(
            f"config.data.num_streams: {streams} data streams must split over the {jax.process_count()} processes "
            f"and split config.batch_size {config.batch_size} evenly"
        )
    return streams
