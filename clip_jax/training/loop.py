"""The training loop, read top to bottom: mesh, data, model and state, step, checkpoint, evals, loop.

    train_and_evaluate(config, workdir)

Starts from the newest intact checkpoint in WORKDIR/checkpoints if there is
one (state and data position: the run continues as if never stopped; a newer
damaged one is reported and set aside, `checkpointing`), else from a fresh
initialisation with the weights the objective names loaded over it
(`config.init_from`, LiT's `config.lit.init_image_from`; LiMBeR: its two
frozen parts). Saves every `checkpoint_every_steps`, at the end, and when the
process gets SIGTERM (preemption), then exits cleanly; a save waits for a
finite step, and config.max_nonfinite_steps non-finite steps in a row end the
run (`nonfinite`).
"""
from __future__ import annotations

import logging
import time
from typing import Any

import jax
import ml_collections
from clu import parameter_overview, periodic_actions

from clip_jax import data
from clip_jax.config import ConfigError
from clip_jax.config.validation import validate
from clip_jax.evaluation.in_loop import EvalTask, make_eval_encoders, run_evals
from clip_jax.runtime import multihost, paths, sharding
from clip_jax.training import checkpointing, flops, metric_logging, nonfinite, train_state, train_step
from clip_jax.training.objectives import Objective, model_metadata, objective_class
from clip_jax.training.objectives.flip import mask_ratio_at
from clip_jax.weights.into_state import load_into_state

log = logging.getLogger("clip_jax.training.loop")

# The image size a text-only run (loss "causal_lm") has the input pipeline decode to: its images are dropped.
TEXT_ONLY_IMAGE_SIZE = 16


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains to config.total_steps (resuming from WORKDIR) and returns the final state."""
    validate(config)
    method = objective_class(config)
    make_workdir(workdir)

    # -- mesh ----------------------------------------------------------------------------------------
    mesh = sharding.make_mesh(config.mesh)
    batch_sharding = sharding.batch_sharding(mesh)

    # -- data: the source opened before anything compiles (a missing one fails at once) ------------
    checkpointer = checkpointing.Checkpointer(workdir, config.keep_checkpoints)
    model, overrides = method.create_model(config)
    image_size = model.visual.image_size if hasattr(model, "visual") else TEXT_ONLY_IMAGE_SIZE
    pipeline = open_training_data(config, method, image_size, checkpointer.recorded_data_streams())

    # -- model and state: the newest intact checkpoint, else a fresh start with the method's weights ---
    rng = jax.random.key(config.seed)
    compiled = train_step.compile_training(model, config, mesh, rng, start_step=min(checkpointer.steps(), default=0))
    resume = checkpointer.restore_newest_intact(compiled.abstract_state)
    if resume:
        state, data_state = resume.state, resume.data_state
        log.info("resumed from step %d in %s", resume.step, checkpointer.directory)
    else:
        state, data_state = compiled.init(rng), None
        shardings = train_state.state_shardings(compiled.abstract_state)
        for weights in method.initial_weights(config):
            state = load_into_state(weights.path, state, shardings, weights.tower, weights.field)
    if jax.process_index() == 0:  # from shapes: parameters sharded over hosts are not all addressable here
        parameter_overview.log_parameter_overview(compiled.abstract_state["params"], include_stats=False)

    # -- step: one compiled program per FLIP mask ratio, its model FLOPs for MFU ----------------------
    peak = metric_logging.peak_flops_per_device(jax.devices()[0])
    model_flops = {
        ratio: flops.model_flops_per_step(model, config, mesh, compiled.abstract_batch, ratio) if peak else None
        for ratio in compiled.steps
    }
    if len(compiled.steps) > 1:  # FLIP's unmasked tuning: the second compiled step takes over
        log.info("FLIP: unmasked tuning from step %d to %d", config.total_steps - config.flip.unmasked_steps,
                 config.total_steps)

    # -- checkpoint: what every save carries besides the state ---------------------------------------
    metadata = {**model_metadata(config, overrides), "tokenizer": config.data.tokenizer, "seed": config.seed,
                "context_length": config.data.context_length}

    # -- evals ---------------------------------------------------------------------------------------
    eval_tasks = [EvalTask(name, spec) for name, spec in config.evals.items()]
    encoders = make_eval_encoders(model, config, batch_sharding)

    # -- loop ----------------------------------------------------------------------------------------
    batches = data.DevicePrefetcher(pipeline.iterator(data_state), batch_sharding)
    writer = metric_logging.create_writer(workdir)
    step = int(state["step"])
    progress = periodic_actions.ReportProgress(
        num_train_steps=config.total_steps, writer=writer, every_secs=config.progress_every_seconds
    )
    preemption = multihost.Preemption()
    window_start, window_steps = time.perf_counter(), 0
    previous_metrics, save_due = None, False
    log.info("training %s from step %d to %d on %s", metadata["model"], step, config.total_steps, mesh)
    try:
        while step < config.total_steps:
            mask_ratio = mask_ratio_at(config, step)
            batch = next(batches)
            state, metrics, probe = compiled.steps[mask_ratio](state, {name: batch[name] for name in compiled.abstract_batch})
            if previous_metrics is not None:  # the step before's count: the devices stay a step ahead
                nonfinite.stop_if_diverged(previous_metrics, step, config.max_nonfinite_steps)
            previous_metrics = metrics
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
                if model_flops[mask_ratio]:
                    scalars["mfu"] = model_flops[mask_ratio] / seconds / (peak * jax.device_count())
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
            save_due |= step % config.checkpoint_every_steps == 0 or step == config.total_steps or stopping
            if save_due and nonfinite.in_a_row(metrics) == 0:  # a due save waits for a finite step
                data_state = data.merge_states(multihost.allgather_json(batches.get_state()))
                checkpointer.save(step, state, data_state, metadata)
                save_due = False
            if stopping:
                break
        if previous_metrics is not None:
            nonfinite.stop_if_diverged(previous_metrics, step, config.max_nonfinite_steps)
        if save_due:
            log.warning("step %d is not saved: the run ended on non-finite steps; the newest checkpoint is %s",
                        step, max(checkpointer.steps(), default="none"))
    finally:
        writer.flush()
        preemption.restore()
        checkpointer.close()  # last: waits for the save in flight, whose failure ends the run
    return state


def make_workdir(workdir: str) -> None:
    """Creates WORKDIR; one that cannot be made is a CheckpointError naming it."""
    try:
        paths.resolve(workdir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise checkpointing.CheckpointError(f"cannot create the workdir {workdir}: {e.strerror or e}") from None


def open_training_data(
    config: ml_collections.ConfigDict, method: type[Objective], image_size: int, recorded_streams: int | None
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
            num_streams=num_data_streams(config, recorded_streams),
            crop_scale=(config.data.min_crop_scale, 1.0),
            shuffle_buffer=config.data.shuffle_buffer,
            resample=config.data.resample,
            chain_captions=config.data.chain_captions,
            normalize=False,  # uint8 pixels to the devices; the step normalizes them
            **method.pipeline_options,
        )
    except (FileNotFoundError, data.NoValidDataError) as e:
        raise ConfigError(f"config.data.train: {e}; set the training data with --config.data.train=SOURCE") from None


def num_data_streams(config: ml_collections.ConfigDict, recorded_streams: int | None) -> int:
    """config.data.num_streams; 0 means one per process of the run that started it (recorded in its checkpoints)."""
    streams = config.data.num_streams or recorded_streams or jax.process_count()
    if streams % jax.process_count() or config.batch_size % streams:
        raise ValueError(
            f"config.data.num_streams: {streams} data streams must split over the {jax.process_count()} processes "
            f"and split config.batch_size {config.batch_size} evenly"
        )
    return streams
