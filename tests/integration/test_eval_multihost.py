"""In-loop evals sharded over processes: 2 processes x 4 CPU devices give a 1 x 8 run's metrics exactly.

One launch of three worker processes (this file run as a script) serves the
multi-process assertions: two form one JAX cluster (gloo collectives on
loopback), one runs alone with 8 devices. Each evaluates a tiny random model
on `shapes` (zero-shot, retrieval with two captions per image, linear probe;
LiMBeR's captioning with a random LiMBeR model)
through `clip_jax.evaluation.in_loop` and writes its metrics and the records
it read.

Why equality is exact: both runs encode global batches of 16 rows, 2 per
device, with the same replicated parameters, so every device runs the same
program and a record's embedding comes out bit for bit the same wherever it
is encoded; the gathered rows are then sorted into a canonical order, so the
metric code sees identical arrays.
"""
import collections
import hashlib
import json
import os
import subprocess
import sys
import traceback

import numpy as np
import pytest

N_EVAL, N_TRAIN = 33, 27  # odd: uneven process shares (17 + 16) and padded final batches
EVAL = f"shapes:eval#size=32&n={N_EVAL}"
TRAIN = f"shapes:val#size=32&n={N_TRAIN}"
TIMEOUT_S = 420
CAPTIONING = dict(type="captioning", data=EVAL, classnames=["circle", "square", "triangle", "diamond", "cross", "ring"])
ZEROSHOT = dict(
    type="zeroshot",
    classnames=["circle", "square", "triangle", "diamond", "cross", "ring"],  # shapes.classnames("shape")
    templates=["a photo of a {}.", "a {} shape."],
)


def worker(process_id: int, num_processes: int, port: int, out: str) -> None:
    """Runs the three evals in this process (of a cluster when num_processes > 1); writes JSON to `out`.

    JSON: "metrics" of run_evals, "read" (the `shapes` records this process
    read, by split), "digests" (of the gathered retrieval embeddings, in
    canonical order), "devices"; one process alone adds "library" (zero-shot
    and retrieval metrics of evaluation.run_eval on plain batches, one device).
    """
    import jax
    import ml_collections

    if num_processes > 1:
        jax.distributed.initialize(
            f"127.0.0.1:{port}", num_processes, process_id, initialization_timeout=120, heartbeat_timeout_seconds=30
        )
    from clip_jax.data import shapes
    from clip_jax.evaluation import in_loop
    from clip_jax.runtime import sharding

    read = collections.defaultdict(list)
    example = shapes.example

    def counted(config: shapes.ShapesConfig, index: int):
        read[config.split].append(index)
        return example(config, index)

    shapes.example = counted
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    model, variables = _tiny_model(sharding.replicated(mesh))
    config = ml_collections.ConfigDict({"data": {"tokenizer": "clip", "context_length": 24}})
    specs = {
        "zeroshot": dict(ZEROSHOT, data=EVAL),
        "retrieval": dict(type="retrieval", data=EVAL, num_captions=2),
        "probe": dict(type="linear_probe", data=EVAL, train_data=TRAIN),
    }
    tasks = [
        in_loop.EvalTask(name, ml_collections.ConfigDict(dict(spec, batch_size=16, every_steps=1)))
        for name, spec in specs.items()
    ]
    encoders = in_loop.make_encoders(model, sharding.batch_sharding(mesh))
    metrics = in_loop.run_evals(tasks, 1, config, 32, variables, encoders)
    limber_model, limber_variables = _tiny_limber(sharding.replicated(mesh))
    captioner = in_loop.make_eval_encoders(limber_model, config, sharding.batch_sharding(mesh))
    captioning = in_loop.EvalTask("captions", ml_collections.ConfigDict(dict(CAPTIONING, batch_size=16, every_steps=1)))
    metrics.update(in_loop.run_evals([captioning], 1, config, 32, limber_variables, captioner))
    result = {"metrics": metrics, "read": {k: list(v) for k, v in read.items()}, "devices": jax.device_count()}
    batch_size = in_loop.local_batch_size(16, encoders.shards, num_processes)
    rows = in_loop.embed_shares(encoders, variables, tasks[1].pipeline(config, 32, EVAL, False, batch_size).iterator())
    result["digests"] = {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest() for k, v in rows.items()}
    if num_processes == 1:
        result["library"] = _library_metrics(model, jax.device_get(variables))
        result["library"].update(_library_captioning(limber_model, jax.device_get(limber_variables)))
    with open(out, "w") as f:
        json.dump(result, f)
    if num_processes > 1:
        jax.distributed.shutdown()


def _tiny_model(sharding):
    """A random 1 + 1 layer CLIP on 32 px images and its variables, placed with `sharding`."""
    import jax
    import jax.numpy as jnp

    from clip_jax import create_model

    model = create_model(
        "ViT-Tiny-8", dtype="float32", embed_dim=32, vision=dict(width=64, layers=1, head_width=32),
        text=dict(width=64, heads=2, layers=1, context_length=24),
    )
    init = jax.jit(model.init, out_shardings=sharding)
    return model, init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 24), jnp.int32))


def _tiny_limber(sharding):
    """A random LiMBeR model (one-block ViT-Tiny-8, one-layer GPT-J-layout LM of width 32) and its variables."""
    import jax
    import jax.numpy as jnp

    from clip_jax.models.limber import create_limber

    model = create_limber(
        "ViT-Tiny-8", "gpt-j-tiny", image_overrides=dict(vision=dict(width=64, layers=1, head_width=32)),
        lm_overrides=dict(width=32, heads=2, layers=1, mlp_dim=64, max_positions=64), dtype="float32",
    )
    init = jax.jit(model.init, out_shardings=sharding)
    return model, init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 24), jnp.int32))


def _library_captioning(model, variables) -> dict[str, float]:
    """The captioning eval's metrics from limber.caption on the plain batches (one device) and caption_eval."""
    import numpy as np

    from clip_jax.data import Pipeline
    from clip_jax.evaluation.caption_eval import caption_eval_metrics
    from clip_jax.models.limber import caption
    from clip_jax.tokenizers import get_tokenizer

    tokenizer = get_tokenizer("clip", 24)
    pipeline = Pipeline(EVAL, training=False, batch_size=16, image_size=32, context_length=24, labels=True, text=True)
    rows = {"captions": [], "tokens": [], "labels": []}
    for batch in pipeline.iterator():
        keep = batch["mask"]
        generated = caption(model, variables, batch["images"], start_id=tokenizer.sot_token_id, max_new_tokens=23,
                            eos_id=tokenizer.eot_token_id)
        rows["captions"].append(np.asarray(generated)[keep])
        rows["tokens"].append(batch["tokens"][keep][:, None])
        rows["labels"].append(batch["labels"][keep])
    rows = {k: np.concatenate(v) for k, v in rows.items()}
    metrics = caption_eval_metrics(
        rows["captions"], rows["tokens"], np.ones(rows["tokens"].shape[:2], bool), tokenizer, rows["labels"],
        CAPTIONING["classnames"],
    )
    return {f"captions/{k}": v for k, v in metrics.items()}


def _library_metrics(model, variables) -> dict[str, float]:
    """Zero-shot and retrieval metrics of evaluation.run_eval on the whole eval set's batches, one device."""
    import jax

    from clip_jax import evaluation
    from clip_jax.data import Pipeline
    from clip_jax.tokenizers import get_tokenizer

    encoders = dict(
        encode_image=jax.jit(lambda x: model.apply(variables, x, method=model.encode_image)),
        encode_text=jax.jit(lambda t: model.apply(variables, t, method=model.encode_text)),
        tokenizer=get_tokenizer("clip", 24),
    )

    def batches(**kwargs) -> list[dict]:
        pipeline = Pipeline(EVAL, training=False, batch_size=16, image_size=32, context_length=24, **kwargs)
        return list(pipeline.iterator())

    zeroshot = evaluation.run_eval(
        "zeroshot", **encoders, batches=batches(text=False, labels=True),
        classnames=ZEROSHOT["classnames"], templates=ZEROSHOT["templates"],
    )
    retrieval = evaluation.run_eval("retrieval", **encoders, batches=batches(num_captions=2))
    return {
        **{f"zeroshot/{k}": v for k, v in zeroshot.items()},
        **{f"retrieval/{k}": v for k, v in retrieval.items()},
    }


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """{"single": one process x 8 devices, "p0"/"p1": two processes x 4 devices}: each worker's JSON."""
    from runs import REPO, cluster_env, free_port  # here: the workers (this file as a script) need none of it

    out = tmp_path_factory.mktemp("eval_multihost")
    port = free_port()
    launches = {"single": (0, 1, 8), "p0": (0, 2, 4), "p1": (1, 2, 4)}
    processes = {}
    for name, (process_id, num_processes, devices) in launches.items():
        env = cluster_env(devices)
        command = [sys.executable, __file__, str(process_id), str(num_processes), str(port), str(out / f"{name}.json")]
        processes[name] = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
    errors = {}
    try:
        for name, process in processes.items():
            errors[name] = process.communicate(timeout=TIMEOUT_S)[1]
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    for name, process in processes.items():
        assert process.returncode == 0, f"{name} exited with {process.returncode}:\n{errors.get(name, '')[-4000:]}"
    return {name: json.loads((out / f"{name}.json").read_text()) for name in launches}


def test_two_processes_give_the_single_process_metrics_exactly(results):
    assert results["single"]["devices"] == results["p0"]["devices"] == 8
    assert results["p0"]["digests"] == results["p1"]["digests"] == results["single"]["digests"]  # the same gathered arrays
    metrics = results["single"]["metrics"]
    expected = {f"zeroshot/{k}" for k in ("top1", "top5", "mean_per_class_recall")}
    expected |= {f"retrieval/{d}_R@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)}
    expected |= {"probe/top1", "probe/val_top1", "probe/l2"}
    expected |= {f"captions/{k}" for k in ("bleu1", "bleu2", "bleu3", "bleu4", "cider", "named")}
    assert set(metrics) == expected
    assert results["p0"]["metrics"] == metrics
    assert results["p1"]["metrics"] == metrics


def test_in_loop_metrics_equal_the_library_path(results):
    """One process: the sharded, gathered, reordered embeddings give what run_eval on the plain batches gives;
    the captioner's captions score what limber.caption's on the plain batches score. (Greedy decoding of
    batches split differently agrees unless two of the 49,408 logits tie to float32 rounding, ~1e-6 of
    their scale, which random weights make vanishingly rare.)"""
    single = results["single"]
    assert single["library"] == pytest.approx({k: single["metrics"][k] for k in single["library"]}, abs=1e-9)


def test_each_process_reads_only_its_share(results):
    """Process p reads records p, p + 2, ...: each eval set once per eval (4 for `eval`, 1 for `val`)."""
    for split, n, reads in (("eval", N_EVAL, 4), ("val", N_TRAIN, 1)):
        assert collections.Counter(results["single"]["read"][split]) == collections.Counter(list(range(n)) * reads)
        for process in (0, 1):
            share = list(range(process, n, 2)) * reads
            assert collections.Counter(results[f"p{process}"]["read"][split]) == collections.Counter(share), split


if __name__ == "__main__":
    try:
        worker(*(int(a) for a in sys.argv[1:4]), sys.argv[4])
    except BaseException:  # a failed process must exit non-zero at once, not wait on its peer's collectives
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
