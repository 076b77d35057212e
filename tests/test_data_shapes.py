"""The generated `shapes` data set: determinism, held-out combinations, captions, labels."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from clip_jax import data
from clip_jax.data import shapes
from clip_jax.data.spec import parse_source


def test_samples_are_a_pure_function_of_seed_split_and_index():
    config = shapes.ShapesConfig(size=32)
    a, b = shapes.render(config, 7), shapes.render(config, 7)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.captions == b.captions
    other = shapes.render(shapes.ShapesConfig(size=32, data_seed=1), 7)
    assert not np.array_equal(a.image, other.image)
    assert a.image.shape == (32, 32, 3) and a.image.dtype == np.uint8


def test_eval_split_holds_exactly_the_held_out_combinations():
    train = {(s.shape, s.color) for s in (shapes.render(shapes.ShapesConfig("train", size=16), i) for i in range(300))}
    held = {(s.shape, s.color) for s in (shapes.render(shapes.ShapesConfig("eval", size=16), i) for i in range(100))}
    assert held == set(shapes.EVAL_COMBOS) and train == set(shapes.TRAIN_COMBOS)
    assert {s for s, _ in held} == set(range(6)) and {c for _, c in held} == set(range(6))


def test_captions_name_shape_and_colour_in_varied_wording():
    config = shapes.ShapesConfig(size=16)
    samples = [shapes.render(config, i) for i in range(60)]
    for s in samples:
        assert len(s.captions) == 2 and s.captions[0] != s.captions[1]
        for caption in s.captions:
            assert shapes.SHAPES[s.shape] in caption and list(shapes.COLORS)[s.color] in caption
            assert " a orange" not in caption and not caption.startswith("a orange")
    assert len({c.replace(shapes.SHAPES[s.shape], "X") for s in samples for c in s.captions}) > 20


def test_shape_is_drawn_in_its_colour_where_the_caption_says():
    sample = shapes.render(shapes.ShapesConfig(size=48), 3)
    colour = np.array(list(shapes.COLORS.values())[sample.color])
    close = np.abs(sample.image.astype(int) - colour).max(axis=-1) <= 15
    ys, xs = np.nonzero(close)
    assert len(ys) > 10
    row, col = int(ys.mean() // 16), int(xs.mean() // 16)
    assert (row, col) == sample.place


def test_labels_and_classnames_agree():
    for label, count in [("shape", 6), ("color", 6), ("combo", 36)]:
        config = shapes.ShapesConfig(size=16, label=label)
        names = shapes.classnames(label)
        assert len(names) == count
        sample = shapes.render(config, 5)
        name = names[shapes.label_of(config, sample)]
        assert all(part in sample.captions[0] or part in sample.captions[1] for part in name.split())
    assert all("{}" in t for t in shapes.TEMPLATES)
    with pytest.raises(ValueError, match="label"):
        shapes.classnames("size")


def test_png_bytes_round_trip_and_source_options():
    config = shapes.ShapesConfig.from_spec(parse_source("shapes:eval#n=12&size=24&label=combo&data_seed=3"))
    assert config == shapes.ShapesConfig("eval", 12, 24, "combo", 3)
    example = shapes.example(config, 0)
    decoded = np.asarray(Image.open(io.BytesIO(example.image)))
    np.testing.assert_array_equal(decoded, shapes.render(config, 0).image)
    with pytest.raises(ValueError, match="split"):
        shapes.ShapesConfig.from_spec(parse_source("shapes:test"))


def test_shapes_flow_through_the_input_pipeline():
    pipe = data.Pipeline(
        "shapes:eval#n=6&size=32", training=False, batch_size=4, image_size=32,
        tokenizer=lambda t: np.zeros((len(t), 5), np.int32), context_length=5, labels=True,
        process_index=0, process_count=1,
    )
    batches = list(pipe.iterator())
    assert [b["mask"].sum() for b in batches] == [4, 2]
    config = shapes.ShapesConfig("eval", 6, 32)
    expected = [shapes.render(config, i) for i in range(6)]
    got_labels = np.concatenate([b["labels"][b["mask"]] for b in batches])
    assert got_labels.tolist() == [s.shape for s in expected]
    image = batches[0]["images"][0] * np.array(data.OPENAI_STD) + np.array(data.OPENAI_MEAN)
    # normalising and undoing it in float32 moves a value in [0, 255] by a few ulps (~1e-4)
    np.testing.assert_allclose(image * 255, expected[0].image, atol=0.01)
