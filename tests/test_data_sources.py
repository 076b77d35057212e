"""Source strings, readers of each kind, bad-record detection, and the restartable order."""
from __future__ import annotations

import os
import struct

import pytest
from test_data_util import (
    encode,
    image_array,
    img2dataset_example,
    sample_members,
    tf_example,
    write_csv,
    write_image_files,
    write_tar,
    write_tfds,
    write_tfrecords,
    write_wds,
)

from clip_jax.data import csvfile, order, records, spec, tfrecord, wds
from clip_jax.data.records import Example, Fields

ALL = lambda i: True  # noqa: E731 - keep every record
WDS_FIELDS = Fields(("jpg", "png"), ("txt",), None)
TFR_FIELDS = Fields(("jpg", "image"), ("txt", "caption"), None)


def kinds(items) -> list[str]:
    return ["ok" if isinstance(i, Example) else i.kind for i in items]


# -- source strings -----------------------------------------------------------


def test_parse_source_kinds_splits_and_options():
    s = spec.parse_source("tfds:coco_captions/2017:1.1.0:val#caption_key=captions/text")
    assert (s.kind, s.target, s.split) == ("tfds", "coco_captions/2017:1.1.0", "val")
    assert s.options == {"caption_key": "captions/text"}
    assert spec.parse_source("tfds:cifar10").split is None
    assert spec.parse_source("tfds:cifar10:train[45000:]").split == "train[45000:]"  # slices may hold colons
    assert spec.parse_source("tfds:cifar10:3.0.2:train[:10%]").target == "cifar10:3.0.2"
    w = spec.parse_source("wds:/d/{00000..00002}.tar#image_key=jpg;webp")
    assert (w.kind, w.target, w.options["image_key"]) == ("wds", "/d/{00000..00002}.tar", "jpg;webp")
    assert spec.parse_source("shapes:eval#n=10&size=32").split == "eval"
    assert spec.parse_source("shapes").split is None
    for bad, match in [("laion:/x", "unknown kind"), ("wds:", "needs a path"), ("csv:/a.csv#n=3", "bad option"),
                       ("tfds:a:b:c", "tfds:NAME"), ("tfds::test", "tfds:NAME")]:
        with pytest.raises(ValueError, match=match):
            spec.parse_source(bad)


def test_parse_mixture_normalizes_weights():
    mix = spec.parse_mixture([("shapes", 3), ("wds:/x/*.tar", 1)])
    assert [round(w, 3) for _, w in mix] == [0.75, 0.25]
    assert [w for _, w in spec.parse_mixture(["shapes", "shapes:val"])] == [0.5, 0.5]
    with pytest.raises(ValueError, match="positive"):
        spec.parse_mixture([("shapes", 0)])


def test_brace_expansion_and_listing(tmp_path):
    assert spec.expand_braces("a/{00..02}.tar") == ["a/00.tar", "a/01.tar", "a/02.tar"]
    assert spec.expand_braces("{x,y}-{1..2}") == ["x-1", "x-2", "y-1", "y-2"]
    write_wds(str(tmp_path), shards=2, per_shard=1)
    files = spec.list_files(spec.parse_source(f"wds:{tmp_path}/{{00000..00002}}.tar"))
    assert [os.path.basename(f) for f in files] == ["00000.tar", "00001.tar", "00002.tar"]  # missing one kept
    assert len(spec.list_files(spec.parse_source(f"wds:{tmp_path}/*.tar"))) == 2
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        spec.list_files(spec.parse_source(f"wds:{tmp_path}/nothing-here*.tar"))


# -- records --------------------------------------------------------------------


def test_image_sniffing_accepts_formats_and_rejects_truncation():
    arr = image_array(3)
    for fmt in ("JPEG", "PNG", "WEBP", "GIF", "BMP"):
        data = encode(arr, fmt)
        assert records.image_looks_valid(data), fmt
        assert not records.image_looks_valid(data[: len(data) // 2]), fmt
    assert not records.image_looks_valid(b"<html>404 not found</html>")
    assert not records.image_looks_valid(b"")


def test_caption_cleaning():
    assert records.clean_captions([b" a cat \n", b""]) == ("a cat",)
    assert records.clean_captions([b"  ", ""]) == "empty_caption"
    assert records.clean_captions([b"\xff\xfe bad"]) == "non_utf8_caption"
    assert records.clean_captions(["ok", "x\udcff"]) == ("ok",)  # surrogate-escaped bytes from CSV


# -- webdataset -------------------------------------------------------------------


def test_wds_reads_img2dataset_layout_with_long_names(tmp_path):
    path = str(tmp_path / "00000.tar")
    long_dir = "d" * 120  # longer than ustar's 100-byte name field: pax path records
    members = sample_members(0) + [
        (f"{long_dir}/000000001.png", encode(image_array(1), "PNG")),
        (f"{long_dir}/000000001.txt", b"r1"),
    ]
    write_tar(path, members)
    items = list(wds.read_shard(path, WDS_FIELDS, ALL))
    assert [i.captions for i in items] == [("r0",), ("r1",)]
    assert items[0].image == members[0][1]


def test_wds_skips_bad_samples_and_truncated_shard(tmp_path):
    members = (
        sample_members(0)
        + sample_members(1, caption=b"")
        + sample_members(2, caption=b"\xff\xfe")
        + sample_members(3, image=b"not an image")
        + [m for m in sample_members(4) if not m[0].endswith(".txt")]
        + [m for m in sample_members(5) if not m[0].endswith(".jpg")]
        + sample_members(6)
        + sample_members(7)
    )
    path = str(tmp_path / "00000.tar")
    write_tar(path, members)
    got = kinds(wds.read_shard(path, WDS_FIELDS, ALL))
    assert got == [
        "ok", "empty_caption", "non_utf8_caption", "bad_image", "missing_caption", "missing_image", "ok", "ok"
    ]
    with open(path, "rb") as f:
        data = f.read()
    cut = data.index(b"r7")  # inside the last sample's caption member
    with open(path, "wb") as f:
        f.write(data[:cut])
    assert kinds(wds.read_shard(path, WDS_FIELDS, ALL))[-2:] == ["ok", "bad_file"]
    assert kinds(wds.read_shard(str(tmp_path / "missing.tar"), WDS_FIELDS, ALL)) == ["bad_file"]
    with open(path, "wb") as f:
        f.write(b"\x01" * 1024)  # garbage header: checksum mismatch
    assert kinds(wds.read_shard(path, WDS_FIELDS, ALL)) == ["bad_file"]


def test_wds_keep_selects_records(tmp_path):
    (path,) = write_wds(str(tmp_path), shards=1, per_shard=6)
    odd = list(wds.read_shard(path, WDS_FIELDS, lambda i: i % 2 == 1))
    assert [i.captions[0] for i in odd] == ["r1", "r3", "r5"]


# -- tfrecord ---------------------------------------------------------------------


def test_tfrecord_reads_img2dataset_and_generic_features(tmp_path):
    generic = tf_example({"image": [encode(image_array(1), "PNG")], "caption": [b"r1", b"r1 again"], "label": [4]})
    path = write_tfrecords(str(tmp_path / "a.tfrecord"), [img2dataset_example(0), generic, b"\x08garbage"])
    items = list(tfrecord.read_file(path, Fields(("jpg", "image"), ("txt", "caption"), ("label",)), ALL))
    assert kinds(items) == ["bad_label", "ok", "bad_record"]  # record 0 has no label
    assert (items[1].captions, items[1].label) == (("r1", "r1 again"), 4)
    assert kinds(tfrecord.read_file(path, TFR_FIELDS, ALL))[:2] == ["ok", "ok"]


def test_tfrecord_framing_matches_tf_and_detects_damage(tmp_path):
    path = write_tfrecords(str(tmp_path / "a.tfrecord"), [img2dataset_example(i) for i in range(3)])
    with open(path, "rb") as f:
        data = f.read()
    assert struct.unpack("<I", data[8:12])[0] == tfrecord.masked_crc32c(data[:8])
    with open(path, "wb") as f:
        f.write(data[:-10])
    assert kinds(tfrecord.read_file(path, TFR_FIELDS, ALL)) == ["ok", "ok", "bad_file"]
    with open(path, "wb") as f:
        f.write(b"\xff" * 8 + data[8:])  # corrupt length: its CRC no longer matches
    assert kinds(tfrecord.read_file(path, TFR_FIELDS, ALL)) == ["bad_file"]


# -- csv --------------------------------------------------------------------------


def test_csv_rows_relative_paths_and_bad_rows(tmp_path):
    rows = write_image_files(str(tmp_path / "imgs"), 3)
    rows = [(f"imgs/{p}", c) for p, c in rows] + [("imgs/gone.png", "r9"), ("imgs/img0.png", "")]
    csv_path = write_csv(str(tmp_path), rows, delimiter="\t")
    with open(csv_path, "ab") as f:
        f.write(b"imgs/img1.png\t\xff\xfe\n")
    source = spec.parse_source(f"csv:{csv_path}#delimiter=tab")
    fields = Fields(("filepath",), ("caption",), None)
    loaded = csvfile.load_rows(source, fields)
    items = [csvfile.row_item(r, str(tmp_path), fields, "x") for r in loaded]
    assert kinds(items) == ["ok", "ok", "ok", "missing_image", "empty_caption", "non_utf8_caption"]
    assert items[2].captions == ("r2",)
    with pytest.raises(ValueError, match="no label column"):
        csvfile.load_rows(source, Fields(("filepath",), ("caption",), ("label",)))


# -- order ------------------------------------------------------------------------


def _fake_files(n_files: int, sizes: list[int]):
    files = [(f, sizes[f]) for f in range(n_files)]
    return files, lambda file: iter([f"{file[0]}-{i}" for i in range(file[1])])


def test_round_robin_restarts_exactly_from_every_cursor():
    files, open_file = _fake_files(5, [3, 1, 4, 0, 2])
    start = order.round_robin_start(2)
    full = list(order.round_robin(files, open_file, 2, start))
    assert [r for r, _ in full][:6] == ["0-0", "1-0", "0-1", "2-0", "0-2", "2-1"]
    assert sorted(r for r, _ in full) == sorted(f"{f}-{i}" for f, n in files for i in range(n))
    for k, (_, cursor) in enumerate(full):
        assert [r for r, _ in order.round_robin(files, open_file, 2, cursor)] == [r for r, _ in full[k + 1 :]]


def test_block_shuffle_permutes_blocks_and_restarts_exactly():
    files, open_file = _fake_files(3, [5, 4, 3])
    inner = lambda c: order.round_robin(files, open_file, 2, c)  # noqa: E731
    start = (*order.round_robin_start(2), 0, 0)
    full = list(order.block_shuffle(inner, start, 4, key=(7,)))
    plain = [r for r, _ in inner(order.round_robin_start(2))]
    shuffled = [r for r, _ in full]
    assert shuffled != plain and sorted(shuffled) == sorted(plain)
    for b in range(0, 12, 4):  # each block is a permutation of the same block of the input
        assert sorted(shuffled[b : b + 4]) == sorted(plain[b : b + 4])
    for k, (_, cursor) in enumerate(full):
        assert [r for r, _ in order.block_shuffle(inner, cursor, 4, key=(7,))] == shuffled[k + 1 :]


def test_epoch_order_modes():
    assert order.epoch_order(5, 0, (1,), shuffle=False, resample=False).tolist() == [0, 1, 2, 3, 4]
    perm = order.epoch_order(50, 0, (1,), shuffle=True, resample=False).tolist()
    assert sorted(perm) == list(range(50)) and perm != list(range(50))
    assert perm != order.epoch_order(50, 1, (1,), shuffle=True, resample=False).tolist()
    draws = order.epoch_order(50, 0, (1,), shuffle=True, resample=True).tolist()
    assert len(draws) == 50 and len(set(draws)) < 50
    assert len({order.hash64(1, i) for i in range(1000)}) == 1000
    assert all(0 <= order.uniform(3, i) < 1 for i in range(100))


# -- tfds -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    pytest.importorskip("tensorflow_datasets")
    return write_tfds(str(tmp_path_factory.mktemp("tfds")))


def test_tfds_reader_nested_captions_labels_and_process_split(tfds_dir):
    from clip_jax.data.tfds_source import TfdsReader

    fields = Fields(("image",), ("caption", "captions/text"), ("label",))
    common = dict(data_dir=tfds_dir, shuffle=False, seed=0, source_text="tfds:toy_captions")
    reader = TfdsReader("toy_captions", "test", fields, process_index=0, process_count=1, **common)
    items = list(reader.read(0, 0))
    assert {i.captions for i in items} == {(f"r{i}", f"r{i}b", f"r{i}c") for i in range(100, 105)}
    assert all(records.image_looks_valid(i.image) for i in items)
    assert [i.label for i in items] == [int(i.captions[0][1:]) % 3 for i in items]
    assert list(reader.read(0, 2)) == items[2:]
    halves = [
        list(TfdsReader("toy_captions", "train", fields, process_index=p, process_count=2, **common).read(0, 0))
        for p in range(2)
    ]
    names = [{i.captions[0] for i in h} for h in halves]
    assert names[0].isdisjoint(names[1]) and names[0] | names[1] == {f"r{i}" for i in range(12)}
    with pytest.raises(ValueError, match="no split"):
        TfdsReader("toy_captions", "validation", fields, process_index=0, process_count=1, **common)
    with pytest.raises(ValueError, match="no caption feature"):
        no_txt = Fields(("image",), ("txt",), None)
        TfdsReader("toy_captions", "test", no_txt, process_index=0, process_count=1, **common)
