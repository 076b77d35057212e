"""The tf.data pipeline end to end: batches, preprocessing, skipping, determinism, resume, sharding."""
from __future__ import annotations

import json
import os
import re

import jax
import numpy as np
import pytest
from PIL import Image
from test_data_util import (
    CONTEXT,
    CharTokenizer,
    corrupt_jpeg,
    detokenize,
    encode,
    image_array,
    sample_members,
    tf_example,
    write_csv,
    write_image_files,
    write_tar,
    write_tfds,
    write_tfrecords,
    write_wds,
)

from clip_jax import data
from clip_jax.data import pipeline as pipeline_module
from clip_jax.inference import images

MEAN, STD = np.array(data.OPENAI_MEAN), np.array(data.OPENAI_STD)


def make(source, **kwargs) -> data.Pipeline:
    args = dict(
        training=True, batch_size=4, image_size=16, tokenizer=CharTokenizer(), context_length=CONTEXT,
        process_index=0, process_count=1, shuffle_buffer=5, cycle_length=2,
    )
    args.update(kwargs)
    return data.Pipeline(source, **args)


def take(iterator, n: int) -> list[dict[str, np.ndarray]]:
    return [next(iterator) for _ in range(n)]


def names(batch) -> list[str]:
    return detokenize(batch["tokens"])


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    """Three shards of 5, 4 and 6 samples (r0..r14), as a wds glob."""
    directory = str(tmp_path_factory.mktemp("wds"))
    write_wds(directory, shards=1, per_shard=5)
    for s, (start, count) in enumerate([(5, 4), (9, 6)], start=1):
        members = [m for i in range(start, start + count) for m in sample_members(i)]
        write_tar(os.path.join(directory, f"{s:05d}.tar"), members)
    return f"wds:{directory}/*.tar"


def test_training_batches_layout_and_values(shards):
    it = make(shards).iterator()
    batches = take(it, 4)  # crosses into the second epoch (15 examples)
    for b in batches:
        assert set(b) == {"images", "tokens"}
        assert b["images"].shape == (4, 16, 16, 3) and b["images"].dtype == np.float32
        assert b["tokens"].shape == (4, CONTEXT) and b["tokens"].dtype == np.int32
        assert np.all(b["images"] >= -MEAN / STD - 1e-5) and np.all(b["images"] <= (1 - MEAN) / STD + 1e-5)
    first_epoch = sum((names(b) for b in batches), [])[:15]
    assert sorted(first_epoch) == sorted(f"r{i}" for i in range(15))
    assert first_epoch != [f"r{i}" for i in range(15)]  # shuffled
    assert it.error_counts() == dict.fromkeys(data.ERROR_KINDS, 0)


def test_eval_reads_everything_once_in_order_with_padding(shards):
    pipe = make(shards, training=False)
    batches = list(pipe.iterator())
    assert len(batches) == 4
    assert [b["mask"].tolist() for b in batches][-1] == [True, True, True, False]
    got = [n for b in batches for n, ok in zip(names(b), b["mask"], strict=False) if ok]
    assert sorted(got) == sorted(f"r{i}" for i in range(15))
    assert got[:4] == ["r0", "r5", "r1", "r6"]  # shards round-robin, two at a time
    assert [names(b) for b in pipe.iterator()] == [names(b) for b in batches]


def test_eval_preprocessing_matches_pil_bicubic_resize_and_center_crop(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (8, 12, 3), dtype=np.uint8)
    array = np.asarray(Image.fromarray(array).resize((50, 30), Image.BILINEAR))  # a natural-ish 30x50 image
    write_tar(str(tmp_path / "00000.tar"), [("a.png", encode(array, "PNG")), ("a.txt", b"r0")])
    (batch,) = list(make(f"wds:{tmp_path}/*.tar", training=False, batch_size=1, image_size=16).iterator())
    reference = Image.fromarray(array).resize((26, 16), Image.BICUBIC)  # short side 16, long int(16 * 50 / 30)
    reference = np.asarray(reference)[:, 5:21] / 255.0
    expected = (reference - MEAN) / STD
    diff = np.abs(batch["images"][0] - expected) * STD * 255  # in uint8 steps
    assert diff.mean() < 0.5 and diff.max() < 1.5  # within one uint8 step of PIL everywhere


def test_same_seed_same_stream_other_seed_other_order(shards):
    a = take(make(shards, seed=3).iterator(), 5)
    b = take(make(shards, seed=3).iterator(), 5)
    c = take(make(shards, seed=4).iterator(), 5)
    for x, y in zip(a, b, strict=False):
        np.testing.assert_array_equal(x["images"], y["images"])
        np.testing.assert_array_equal(x["tokens"], y["tokens"])
    assert [names(x) for x in a] != [names(x) for x in c]


def test_resume_sees_what_an_uninterrupted_run_sees(shards, tmp_path):
    rows = write_image_files(str(tmp_path / "imgs"), 6, start=50)
    csv_path = write_csv(str(tmp_path), [(f"imgs/{p}", c) for p, c in rows])
    source = [(shards, 2.0), (f"csv:{csv_path}", 1.0), ("shapes#n=20&size=16", 1.0)]
    full_it = make(source, batch_size=3).iterator()
    full, states = [], []
    for _ in range(16):  # several epochs of every source
        full.append(next(full_it))
        states.append(json.loads(json.dumps(full_it.get_state())))
    for k in (0, 4, 9):
        resumed = make(source, batch_size=3).iterator(states[k])
        for expected, got in zip(full[k + 1 :], take(resumed, 16 - k - 1), strict=False):
            np.testing.assert_array_equal(expected["tokens"], got["tokens"])
            np.testing.assert_array_equal(expected["images"], got["images"])
    it = make(source, batch_size=3).iterator()
    it.set_state(states[2])
    assert names(next(it)) == names(full[3])


def test_resume_at_every_batch_of_a_small_sharded_source(shards):
    full_it = make(shards, batch_size=4, shuffle_buffer=4).iterator()
    full, states = [], []
    for _ in range(9):
        full.append(names(next(full_it)))
        states.append(full_it.get_state())
    for k in range(8):
        assert names(next(make(shards, batch_size=4, shuffle_buffer=4).iterator(states[k]))) == full[k + 1]


def test_bad_records_and_files_are_skipped_counted_and_resumed(tmp_path):
    members = (
        sample_members(0)
        + sample_members(1, caption=b"   ")
        + sample_members(2, caption=b"\xc3\x28 bad utf-8")
        + sample_members(3, image=b"<html>gone</html>")
        + sample_members(4, image=corrupt_jpeg(4))  # only decoding can tell
        + [m for m in sample_members(5) if not m[0].endswith(".txt")]
        + [m for m in sample_members(6) if not m[0].endswith(".jpg")]
        + sample_members(7)
    )
    write_tar(str(tmp_path / "00000.tar"), members)
    write_tar(str(tmp_path / "00001.tar"), sample_members(8) + sample_members(9))
    data_01 = (tmp_path / "00001.tar").read_bytes()
    with open(tmp_path / "00001.tar", "wb") as f:
        f.write(data_01[: data_01.index(b"r9")])  # truncated inside its last sample
    source = f"wds:{tmp_path}/{{00000..00002}}.tar"  # 00002.tar does not exist
    expected = {
        "bad_image": 2, "missing_image": 1, "missing_caption": 1, "empty_caption": 1,
        "non_utf8_caption": 1, "bad_label": 0, "bad_record": 0, "bad_file": 2,
    }
    it = make(source, training=False, batch_size=2).iterator()
    got = [n for b in it for n, ok in zip(names(b), b["mask"], strict=False) if ok]
    assert sorted(got) == ["r0", "r7", "r8"]
    assert it.error_counts() == expected
    train = make(source, batch_size=2, shuffle_buffer=3)
    first = train.iterator()
    take(first, 2)
    resumed = train.iterator(first.get_state())
    assert resumed.error_counts() == first.error_counts()
    for a, b in zip(take(first, 4), take(resumed, 4), strict=False):  # two more epochs: counts keep matching
        assert names(a) == names(b)
    assert resumed.error_counts() == first.error_counts()
    assert first.error_counts()["bad_file"] > expected["bad_file"]


def test_nothing_valid_fails_naming_the_source(tmp_path):
    write_tar(str(tmp_path / "00000.tar"), sample_members(0, caption=b"") + sample_members(1, image=b"junk"))
    source = f"wds:{tmp_path}/*.tar"
    for training in (True, False):
        with pytest.raises(data.NoValidDataError, match=re.escape(f"{source!r} has no valid example")):
            next(make(source, training=training).iterator())


def test_undecodable_images_at_chunk_edges_are_counted_exactly(tmp_path):
    """The producer hands tf.data chunks of 4: failures that end a chunk, start the next, and inside one.

    (Counts run up to the last example delivered, as the resume state does.)
    """
    bad = {3, 4, 9}
    write_tar(str(tmp_path / "00000.tar"), [
        m for i in range(12) for m in sample_members(i, **({"image": corrupt_jpeg(i)} if i in bad else {}))
    ])
    it = make(f"wds:{tmp_path}/*.tar", training=False, batch_size=3, chunk_size=4).iterator()
    got = [n for b in it for n, ok in zip(names(b), b["mask"], strict=True) if ok]
    assert got == [f"r{i}" for i in range(12) if i not in bad]
    assert it.error_counts()["bad_image"] == len(bad)


def test_uint8_pixels_normalize_to_the_float_batch(shards):
    """normalize=False (what training sends to the devices): the same pixels, before `images.normalize`."""
    floats = next(make(shards).iterator())
    pixels = next(make(shards, normalize=False).iterator())
    assert pixels["images"].dtype == np.uint8
    np.testing.assert_array_equal(pixels["tokens"], floats["tokens"])
    # Both compute x * (1 / (255 std)) + (-mean / std) in float32 (XLA on TF's side, jnp here), |result| <= 2.2:
    # each rounds at most twice (multiply, add; once with FMA), 2 ulp of 2.2 = 4.8e-7, so they differ by < 1e-6.
    np.testing.assert_allclose(images.normalize(pixels["images"]), floats["images"], rtol=0, atol=1e-6)


def test_a_streak_of_undecodable_images_fails_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline_module, "MAX_CONSECUTIVE_DECODE_FAILURES", 5)
    write_tar(str(tmp_path / "00000.tar"), [m for i in range(3) for m in sample_members(i, image=corrupt_jpeg(i))])
    with pytest.raises(data.NoValidDataError, match="failed to decode"):
        next(make(f"wds:{tmp_path}/*.tar").iterator())


def test_state_from_other_settings_is_refused(shards):
    it = make(shards, seed=0).iterator()
    next(it)
    with pytest.raises(ValueError, match="seed"):
        make(shards, seed=1).iterator(it.get_state())


@pytest.mark.parametrize("n_shards", [4, 1])
def test_processes_read_disjoint_shares_that_cover_the_data(tmp_path, n_shards):
    write_wds(str(tmp_path), shards=n_shards, per_shard=12 // n_shards)
    seen = []
    for p in range(2):
        it = make(f"wds:{tmp_path}/*.tar", training=False, process_index=p, process_count=2).iterator()
        seen.append({n for b in it for n, ok in zip(names(b), b["mask"], strict=False) if ok})
    assert seen[0].isdisjoint(seen[1])
    assert seen[0] | seen[1] == {f"r{i}" for i in range(12)}


def test_mixture_follows_weights(tmp_path):
    write_wds(str(tmp_path / "a"), shards=2, per_shard=10)
    write_wds(str(tmp_path / "b"), shards=2, per_shard=10, start=100)
    source = [(f"wds:{tmp_path}/a/*.tar", 0.8), (f"wds:{tmp_path}/b/*.tar", 0.2)]
    got = sum((names(b) for b in take(make(source, batch_size=20).iterator(), 10)), [])
    share_a = np.mean([int(n[1:]) < 100 for n in got])
    assert 0.7 < share_a < 0.9


def test_caption_lists_sampled_in_training_and_all_kept_in_eval(tmp_path):
    examples = [
        tf_example({"image": [encode(image_array(i))], "caption": [f"r{i}", f"r{i}b", f"r{i}c"][: 2 + i % 2]})
        for i in range(4)
    ]
    path = write_tfrecords(str(tmp_path / "a.tfrecord"), examples)
    source = f"tfrecord:{path}"
    seen = sum((names(b) for b in take(make(source, batch_size=4).iterator(), 12)), [])
    assert {n for n in seen if n.startswith("r0")} == {"r0", "r0b"}
    (batch,) = list(make(source, training=False, num_captions=3).iterator())
    assert batch["tokens"].shape == (4, 3, CONTEXT)
    assert batch["caption_mask"].tolist() == [[True, True, False], [True, True, True]] * 2
    assert detokenize(batch["tokens"][1]) == ["r1", "r1b", "r1c"]


def test_chained_captions_hold_all_of_an_examples_captions():
    """chain_captions (a caption LM's training): start, caption, start, next caption, end, zeros; cut to the
    context with the end token last; in the pipeline each row is one `shapes` example's two captions."""
    from clip_jax.data import shapes
    from clip_jax.data.pipeline import chained_tokens
    from clip_jax.tokenizers import ClipTokenizer

    tokenizer = ClipTokenizer(32)
    sot, eot, encode = tokenizer.sot_token_id, tokenizer.eot_token_id, tokenizer.encode
    expected = [sot, *encode("a red circle"), sot, *encode("the circle is red"), eot]
    assert chained_tokens(tokenizer, ["a red circle", "the circle is red"], 32).tolist() == expected + [0] * (32 - len(expected))
    assert chained_tokens(tokenizer, ["a red circle", "the circle is red"], 6).tolist() == expected[:5] + [eot]
    batch = next(data.make_iterator(
        "shapes#n=8&size=16", training=True, batch_size=8, image_size=16, context_length=32, chain_captions=True,
        process_index=0, process_count=1,
    ))
    examples = [shapes.render(shapes.ShapesConfig(n=8, size=16), i).captions for i in range(8)]
    for row in batch["tokens"].tolist():
        end = row.index(eot)
        second = row.index(sot, 1)
        pair = (row[1:second], row[second + 1 : end])
        assert any(sorted(pair) == sorted(encode(c) for c in captions) for captions in examples), row
    with pytest.raises(ValueError, match="chain_captions"):
        data.Pipeline("shapes", training=False, batch_size=4, chain_captions=True)


def test_labels_without_text_and_make_dataset():
    ds = data.make_dataset(
        "shapes:val#n=10&size=16&label=color", training=False, batch_size=4, image_size=16, text=False,
        labels=True, process_index=0, process_count=1,
    )
    batches = list(ds.as_numpy_iterator())
    assert len(batches) == 3 and set(batches[0]) == {"images", "labels", "mask"}
    labels = np.concatenate([b["labels"][b["mask"]] for b in batches])
    assert len(labels) == 10 and labels.min() >= 0 and labels.max() < 6


def test_real_tokenizer_is_built_from_its_spec():
    batch = next(data.make_iterator(
        "shapes#n=8&size=16", training=True, batch_size=4, image_size=16, tokenizer="clip",
        process_index=0, process_count=1,
    ))
    assert batch["tokens"].shape == (4, 77) and (batch["tokens"][:, 0] == 49406).all()


def test_tfds_source_trains_and_evaluates(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    data_dir = write_tfds(str(tmp_path))
    train = make(f"tfds:toy_captions:train#data_dir={data_dir}", labels=True)
    it = train.iterator()
    first = take(it, 4)
    assert all(b["labels"].shape == (4,) for b in first)
    resumed = train.iterator(json.loads(json.dumps(it.get_state())))
    assert names(next(resumed)) == names(next(it))
    evaluated = list(make(f"tfds:toy_captions:test#data_dir={data_dir}", training=False, num_captions=3).iterator())
    assert evaluated[0]["tokens"].shape == (4, 3, CONTEXT) and len(evaluated) == 2


def test_resampled_shards_are_deterministic(shards):
    a = [names(b) for b in take(make(shards, resample=True).iterator(), 6)]
    b = [names(b) for b in take(make(shards, resample=True).iterator(), 6)]
    assert a == b


def test_global_batches_and_device_prefetch_keep_the_resume_state(shards):
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = data.batch_sharding(mesh)
    pipe = make(shards, batch_size=8)
    prefetcher = data.DevicePrefetcher(pipe.iterator(), sharding, size=2)
    batch = next(prefetcher)
    assert batch["images"].shape == (8, 16, 16, 3) and batch["images"].sharding == sharding
    assert len(batch["images"].addressable_shards) == 8
    reference = pipe.iterator()
    expected = next(reference)
    np.testing.assert_array_equal(np.asarray(batch["tokens"]), expected["tokens"])
    assert prefetcher.get_state() == reference.get_state()  # not the state of the prefetched batch
    assert prefetcher.error_counts() == reference.error_counts()


def test_png_and_webp_images_decode(tmp_path):
    members = []
    for i, fmt in enumerate(["PNG", "WEBP", "GIF", "BMP"]):
        ext = {"PNG": "png", "WEBP": "webp", "GIF": "png", "BMP": "png"}[fmt]
        members += [(f"{i:09d}.{ext}", encode(image_array(i), fmt)), (f"{i:09d}.txt", f"r{i}".encode())]
    write_tar(str(tmp_path / "00000.tar"), members)
    it = make(f"wds:{tmp_path}/*.tar", training=False).iterator()
    (batch,) = list(it)
    assert sorted(names(batch)) == ["r0", "r1", "r2", "r3"] and it.error_counts()["bad_image"] == 0


# ----------------------------------------------------------------------------
# data streams: the global batch does not depend on the process count


def global_batches(source, num_streams, process_count, n, states=None, **kwargs):
    """n global batches of 8 as the processes would assemble them (process-major), and each process's state."""
    iterators = [
        make(source, batch_size=8 // process_count, num_streams=num_streams, process_index=p,
             process_count=process_count, **kwargs).iterator(states)
        for p in range(process_count)
    ]
    batches = []
    for _ in range(n):
        parts = [next(it) for it in iterators]
        batches.append({k: np.concatenate([part[k] for part in parts]) for k in parts[0]})
    return batches, [it.get_state() for it in iterators]


@pytest.fixture(scope="module")
def shards_with_undecodable_images(tmp_path_factory) -> str:
    """Four shards of 6 samples; r3 and r14 decode as garbage (only tf.data's decoder can tell)."""
    directory = tmp_path_factory.mktemp("bad_wds")
    for s in range(4):
        members = [
            m for i in range(6 * s, 6 * s + 6)
            for m in sample_members(i, **({"image": corrupt_jpeg(i)} if i in (3, 14) else {}))
        ]
        write_tar(str(directory / f"{s:05d}.tar"), members)
    return f"wds:{directory}/*.tar"


@pytest.mark.parametrize("source", ["shards", "bad_images", "shapes#size=16&n=37"])
def test_global_batch_is_the_same_for_every_process_count(source, shards, shards_with_undecodable_images):
    """Also with undecodable images: each stream replaces its own failures, so the batches stay the same."""
    source = {"shards": shards, "bad_images": shards_with_undecodable_images}.get(source, source)
    expected, states = global_batches(source, num_streams=4, process_count=1, n=5)  # crosses epochs
    skipped = sum(stream["skipped"]["bad_image"] for stream in states[0]["streams"].values())
    assert (skipped >= 2) if source == shards_with_undecodable_images else (skipped == 0)  # the first epoch's two
    for process_count in (2, 4):
        got, _ = global_batches(source, num_streams=4, process_count=process_count, n=5)
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_array_equal(a["tokens"], b["tokens"])
            np.testing.assert_array_equal(a["images"], b["images"])  # same crops: seeded by (seed, stream, m)


def test_resume_on_another_process_count(shards):
    """Elastic resume: 2 processes stop after 3 batches, 1 process (and 4) go on exactly."""
    expected, _ = global_batches(shards, num_streams=4, process_count=1, n=6)
    _, states = global_batches(shards, num_streams=4, process_count=2, n=3)
    saved = json.loads(json.dumps(data.merge_states(states)))
    assert sorted(saved["streams"]) == ["0", "1", "2", "3"]
    for process_count in (1, 4):
        resumed, _ = global_batches(shards, num_streams=4, process_count=process_count, n=3, states=saved)
        for a, b in zip(resumed, expected[3:], strict=True):
            np.testing.assert_array_equal(a["tokens"], b["tokens"])


def test_streams_must_split_over_processes_and_batch(shards):
    with pytest.raises(ValueError, match="num_streams 4 is not a multiple of the 3 processes"):
        make(shards, num_streams=4, process_index=0, process_count=3)
    with pytest.raises(ValueError, match="batch_size 6 does not split over this process's 4 data streams"):
        make(shards, batch_size=6, num_streams=4)
    state = make(shards, num_streams=4, process_index=0, process_count=2).iterator().get_state()
    with pytest.raises(ValueError, match=r"no position for streams \[2, 3\]"):
        make(shards, num_streams=4, process_index=1, process_count=2).iterator(state)
