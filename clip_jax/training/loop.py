"""The training loop: state, sharded step, input pipeline, checkpoints, logging, evals.

    train_and_evaluate(config, workdir)

Starts from the newest complete checkpoint in WORKDIR/checkpoints if there is
one (state and data position: the run continues as if never stopped), else
from `config.init_from` weights or a fresh initialisation (LiMBeR: its two
frozen parts from config.limber.image_from and lm_from). Saves every
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

from clip_jax import data
from clip_jax.config import ConfigError, validate
from clip_jax.evaluation.in_loop import EvalTask, make_eval_encoders, run_evals
from clip_jax.model_config import check_context_length, model_from_config, model_metadata
from clip_jax.runtime import multihost, paths, sharding
from clip_jax.training import checkpointing, flops, metric_logging, train_state, train_step
from clip_jax.training.objectives import flip
from clip_jax.weights import storage as weights
from clip_jax.weights.open_clip import stack_layers, unstack_layers

log = logging.getLogger("clip_jax.training.loop")

# Top-level parameters that only some losses have: the loss's logit scalars, CLIP-Lite's critic heads,
# DeCLIP's training heads.
KEPT_WHEN_ABSENT = ("logit_scale", "logit_bias", "image_critic", "text_critic", "heads")
# The image size a text-only run (loss "causal_lm") has the input pipeline decode to: its images are dropped.
TEXT_ONLY_IMAGE_SIZE = 16


def _only(collections: dict[str, Any], tower: str | None) -> dict[str, Any]:
    """{'params': ..., 'batch_stats': ...} cut down to `tower`'s subtree in each (all of it when tower is None)."""
    if tower is None:
        return collections
    return {k: {tower: tree[tower]} if tower in tree else {} for k, tree in collections.items()}


def _load_init_weights(
    path: str, state: dict[str, Any], shardings: dict[str, Any], tower: str | None = None, field: str = "init_from"
) -> dict[str, Any]:
    """Replaces params (and batch_stats) with converted weights or another run's newest checkpoint.

    With `tower` ('visual' or 'text') only that subtree is replaced and the rest keeps its values; weights of
    a bare language model (metadata kind "lm", clip_jax.lm.import_weights) are that 'text' tower whole.
    Layer stacks are converted between the scanned and the plain layout as the model needs;
    a part the weights lack (KEPT_WHEN_ABSENT: CLIP weights for a SigLIP or CLIP-Lite run) keeps its initial value.
    `field` names the config field in errors and logs.
    """
    variables, metadata = weights.load_variables(path)
    if tower is not None and metadata.get("kind") == "lm":
        variables = {k: {tower: v} for k, v in variables.items() if v}
    current = _only({k: state[k] for k in ("params", "batch_stats")}, tower)
    variables = _only({k: variables.get(k, {}) for k in ("params", "batch_stats")}, tower)
    for collection, tree in current.items():  # e.g. CLIP weights for a SigLIP or CLIP-Lite run
        missing = [k for k in KEPT_WHEN_ABSENT if k in tree and k not in variables[collection]]
        if missing:
            variables[collection] = {**variables[collection], **jax.device_get({k: tree[k] for k in missing})}
            log.info("%s: %s has no %s %s; starting them from the config's init", field, path, collection, missing)
    expected = jax.tree.map(lambda x: x.shape, current)
    for layout in (lambda v: v, stack_layers, unstack_layers):
        candidate = {k: layout(v) for k, v in variables.items()}
        if jax.tree.map(lambda x: x.shape, candidate) == expected:
            break
    else:
        want = traverse_util.flatten_dict(expected, sep="/")
        found = traverse_util.flatten_dict(jax.tree.map(lambda x: x.shape, variables), sep="/")
        differ = sorted(k for k in want.keys() | found.keys() if want.get(k) != found.get(k))
        raise ValueError(f"config.{field}: the parameters in {path} do not fit the model; they differ at {differ[:6]}")
    for collection, values in candidate.items():
        values = {**state[collection], **jax.tree.map(lambda x: np.asarray(x, np.float32), values)}
        state[collection] = jax.device_put(values, shardings[collection])
    log.info("%s: initialised %s from %s", field, "parameters" if tower is None else f"the {tower} tower", path)
    return state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains to config.total_steps (resuming from WORKDIR) and returns the final state."""
    validate(config)
    paths.resolve(workdir).mkdir(parents=True, exist_ok=True)
    mesh = sharding.make_mesh(config.mesh)
    model, overrides = model_from_config(config)
    image_size = model.visual.image_size if hasattr(model, "visual") else TEXT_ONLY_IMAGE_SIZE
    check_context_length(model, config)
    checkpointer = checkpointing.Checkpointer(workdir, config.keep_checkpoints)
    latest = checkpointer.latest_step()
    data_state = checkpointer.restore_data(latest) if latest is not None else None
    pipeline = open_training_data(config, image_size, data_state)  # before compiling: a missing source fails fast
    rng = jax.random.key(config.seed)
    mask_ratio = flip.mask_ratio_at(config, latest or 0)  # FLIP: the ratio of the first step this run takes
    compiled = train_step.compile_training(model, config, mesh, rng, mask_ratio)
    step_fn = compiled.step
    metadata = {**model_metadata(config, overrides), "tokenizer": config.data.tokenizer, "seed": config.seed,
                "context_length": config.data.context_length}
    if latest is not None:
        state = checkpointer.restore(latest, compiled.abstract_state)
        log.info("resumed from step %d in %s", latest, checkpointer.directory)
    else:
        state = compiled.init(rng)
        shardings = train_state.state_shardings(compiled.abstract_state)
        if config.init_from:
            state = _load_init_weights(config.init_from, state, shardings)
        if config.lit.init_image_from:
            state = _load_init_weights(config.lit.init_image_from, state, shardings, "visual", "lit.init_image_from")
        if config.loss == "limber":  # the frozen parts; only the projection keeps its initialisation
            state = _load_init_weights(config.limber.image_from, state, shardings, "visual", "limber.image_from")
            state = _load_init_weights(config.limber.lm_from, state, shardings, "text", "limber.lm_from")
    batch_sharding = sharding.batch_sharding(mesh)
    batches = data.DevicePrefetcher(pipeline.iterator(data_state), batch_sharding)

    writer = metric_logging.create_writer(workdir)
    if jax.process_index() == 0:  # from shapes: parameters sharded over hosts are not all addressable here
        parameter_overview.log_parameter_overview(compiled.abstract_state["params"], include_stats=False)
    peak = metric_logging.peak_flops_per_device(jax.devices()[0])
    model_flops = flops.model_flops_per_step(model, config, mesh, compiled.abstract_batch, mask_ratio) if peak else None
    eval_tasks = [EvalTask(name, spec) for name, spec in config.evals.items()]
    encoders = make_eval_encoders(model, config, batch_sharding)

    step = int(state["step"])
    progress = periodic_actions.ReportProgress(
        num_train_steps=config.total_steps, writer=writer, every_secs=config.progress_every_seconds
    )
    preemption = multihost.Preemption()
    window_start, window_steps = time.perf_counter(), 0
    log.info("training %s from step %d to %d on %s", metadata["model"], step, config.total_steps, mesh)
    try:
        while step < config.total_steps:
            if flip.mask_ratio_at(config, step) != mask_ratio:  # FLIP's unmasked tuning: a compiled step of its own
                mask_ratio = flip.mask_ratio_at(config, step)
                log.info("FLIP: unmasked tuning from step %d to %d", step, config.total_steps)
                step_fn = train_step.compile_step(
                    model, config, mesh, compiled.abstract_state, compiled.abstract_batch, mask_ratio
                )
                if peak:
                    model_flops = flops.model_flops_per_step(model, config, mesh, compiled.abstract_batch, mask_ratio)
                window_start, window_steps = time.perf_counter(), 0
            batch = next(batches)
            state, metrics, probe = step_fn(state, {name: batch[name] for name in compiled.abstract_batch})
            step += 1
            window_steps += 1
            progress(step)
            if step % config.log_every_steps == 0 or step == config.total_steps:
                metrics = {**metrics, **compiled.in_batch_metrics(probe)}  # on log steps only: a pass of its own
                scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
                seconds = (time.perf_counter() - window_start) / window_steps
                scalars.update(step_time=seconds, samples_per_second=config.batch_size / seconds)
                if config.flip.mask_ratio:
                    scalars["flip/mask_ratio"] = mask_ratio
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
            declip_views=config.loss == "declip",
            chain_captions=config.data.chain_captions,
            normalize=False,  # uint8 pixels to the devices; the step normalizes them
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
