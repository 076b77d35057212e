"""EDA caption augmentation and DeCLIP's extra views (second crop, EDA caption) in the input pipeline."""
from __future__ import annotations

import collections
import itertools
import json
import string

import numpy as np
import pytest
from test_data_util import corrupt_jpeg, detokenize, sample_members, write_tar

from clip_jax import data
from clip_jax.data import eda, shapes
from clip_jax.data import pipeline as pipeline_module

TOY_SYNONYMS = {
    "small": ("little", "tiny"),
    "red": ("crimson", "scarlet"),
    "circle": ("disc",),
    "corner": ("angle", "nook"),
    "the": ("thee",),  # a stop word: never replaced even when listed
}
SOURCE = "shapes#n=40&size=32"
LOW = -np.array(data.OPENAI_MEAN) / np.array(data.OPENAI_STD)  # normalized black and white
HIGH = (1 - np.array(data.OPENAI_MEAN)) / np.array(data.OPENAI_STD)


class LongCharTokenizer:
    """One token per character (its code point), 0-padded to 96: long enough for whole shapes captions."""

    context_length = 96

    def __call__(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.context_length), np.int32)
        for i, text in enumerate(texts):
            out[i, : len(text)] = [ord(c) for c in text[: self.context_length]]
        return out


def make(source: str = SOURCE, **kwargs) -> data.Pipeline:
    args = dict(
        training=True, batch_size=8, image_size=32, tokenizer=LongCharTokenizer(), context_length=96,
        seed=0, process_index=0, process_count=1, declip_views=True,
    )
    args.update(kwargs)
    return data.Pipeline(source, **args)


def take(iterator, n: int) -> list[dict[str, np.ndarray]]:
    return [next(iterator) for _ in range(n)]


def assert_same_batches(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert set(x) == set(y)
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def is_eda_of(augmented: str, caption: str, synonyms) -> bool:
    """Whether `augmented` is a swap, a deletion or a synonym replacement of the lowercased caption."""
    a, c = augmented.split(), caption.lower().split()
    if sorted(a) == sorted(c):
        return True
    if len(a) < len(c):
        rest = iter(c)
        return all(word in rest for word in a)  # an order-keeping subsequence
    if len(a) != len(c):
        return False
    for new, old in zip(a, c, strict=True):
        key = old.rstrip(string.punctuation)
        if new != old and (new != new.rstrip(string.punctuation) + old[len(key):] or
                           new.rstrip(string.punctuation) not in synonyms.get(key, ())):
            return False
    return True


# -- the three operations ---------------------------------------------------


def test_synonym_replacement_changes_exactly_n_replaceable_words():
    words = "a small red circle in the zorblax corner,".split()
    replaceable = {1, 2, 3, 7}  # small, red, circle, corner, (not "a", "in", "the", unknown "zorblax")
    for n, seed in itertools.product([1, 2, 3, 4, 9], range(20)):
        out = eda.synonym_replacement(words, np.random.default_rng(seed), TOY_SYNONYMS, n)
        changed = {i for i, (w, o) in enumerate(zip(words, out, strict=True)) if w != o}
        assert len(changed) == min(n, len(replaceable)) and changed <= replaceable
        for i in changed:
            key = words[i].rstrip(",")
            assert out[i].rstrip(",") in TOY_SYNONYMS[key]
            assert out[i].endswith(",") == words[i].endswith(",")  # trailing punctuation stays attached
    assert eda.synonym_replacement(["the", "zorblax"], np.random.default_rng(0), TOY_SYNONYMS, 1) == ["the", "zorblax"]
    # EDA replaces a chosen word everywhere it occurs, with one synonym.
    out = eda.synonym_replacement(["red", "zorblax", "red"], np.random.default_rng(0), TOY_SYNONYMS, 1)
    assert out[0] == out[2] and out[0] in TOY_SYNONYMS["red"] and out[1] == "zorblax"


def test_random_swap_keeps_the_words_and_moves_them():
    words = [f"w{i}" for i in range(10)]
    for n, seed in itertools.product([1, 3, 5], range(20)):
        out = eda.random_swap(words, np.random.default_rng(seed), n)
        assert sorted(out) == sorted(words)
        assert out != words  # an odd number of transpositions of distinct words is never the identity
    assert eda.random_swap(["only"], np.random.default_rng(0), 3) == ["only"]
    assert eda.random_swap([], np.random.default_rng(0), 3) == []


def test_random_deletion_keeps_order_and_at_least_one_word():
    words = [f"w{i}" for i in range(10)]
    kept_one = {eda.random_deletion(words, np.random.default_rng(seed), 1.0)[0] for seed in range(40)}
    for seed in range(40):
        rng = np.random.default_rng(seed)
        assert len(eda.random_deletion(words, rng, 1.0)) == 1
        assert eda.random_deletion(words, rng, 0.0) == words
        half = eda.random_deletion(words, rng, 0.5)
        assert half == [w for w in words if w in half]  # a subsequence, in order
    assert len(kept_one) > 5 and kept_one <= set(words)  # the survivor is a random word
    assert eda.random_deletion([], np.random.default_rng(0), 1.0) == []


def test_augment_caption_is_a_deterministic_function_of_the_generator():
    caption = "A Small red circle in the top left corner"
    outputs = [eda.augment_caption(caption, np.random.default_rng(seed), eda.load_synonyms()) for seed in range(50)]
    again = [eda.augment_caption(caption, np.random.default_rng(seed), eda.load_synonyms()) for seed in range(50)]
    assert outputs == again
    assert len(set(outputs)) > 20
    assert all(o == o.lower() and is_eda_of(o, caption, eda.load_synonyms()) for o in outputs)
    for seed in range(10):
        rng = np.random.default_rng(seed)
        assert eda.augment_caption("", rng, TOY_SYNONYMS) == ""
        assert eda.augment_caption("   ", rng, TOY_SYNONYMS) == ""
        assert eda.augment_caption("Zorblax", rng, TOY_SYNONYMS) == "zorblax"  # every operation leaves it


def test_the_three_operations_are_drawn_equally_often():
    # 20 distinct replaceable words and alpha = 0.45, so n = 9: replacement keeps the length and changes
    # words, a swap (9 transpositions: an odd permutation) keeps the words in another order, and deletion
    # (p = 0.45) shortens the caption unless no word is hit (0.55**20 < 1e-5).
    words = [f"w{i}" for i in range(20)]
    synonyms = {w: (w + "x",) for w in words}
    caption = " ".join(words)
    counts = collections.Counter()
    for seed in range(300):
        out = eda.augment_caption(caption, np.random.default_rng([7, seed]), synonyms, alpha=0.45).split()
        if len(out) < len(words):
            counts["random_deletion"] += 1
        elif sorted(out) == sorted(words):
            counts["random_swap"] += 1
        else:
            assert sum(o != w for o, w in zip(out, words, strict=True)) == 9
            counts["synonym_replacement"] += 1
    # Each count is Binomial(300, 1/3): mean 100, sd sqrt(300 * 1/3 * 2/3) = 8.2; [70, 130] is +-3.7 sd
    # (a fair draw falls outside with probability < 3e-4), while a skew to 1/4 or 1/2 (mean 75 or 150) shows.
    assert set(counts) == set(eda.OPERATIONS)
    assert all(70 <= c <= 130 for c in counts.values()), counts


# -- the shipped synonym list -----------------------------------------------


def shapes_caption_words() -> set[str]:
    """Every word (without trailing punctuation) of every caption the shapes data set can generate."""
    words = set()
    sizes = [w for ws in shapes.SIZE_WORDS.values() for w in ws]
    for template, size, color, shape, place in itertools.product(
        shapes.CAPTION_TEMPLATES, sizes, shapes.COLORS, shapes.SHAPES, shapes.PLACES.values()
    ):
        caption = shapes._article(template.format(size=size, color=color, shape=shape, place=place))
        words |= {w.rstrip(string.punctuation) for w in caption.lower().split()}
    return words


def test_shipped_synonyms_parse_and_are_plausible():
    table = eda.load_synonyms()
    assert len(table) >= 300
    assert not set(table) & eda.STOP_WORDS
    for word, synonyms in table.items():
        assert word == word.lower() and word.strip() == word and synonyms
        assert word not in synonyms, word
        assert len(set(synonyms)) == len(synonyms), word
        assert all(s == s.lower() and not any(c.isspace() for c in s) for s in synonyms), word
    assert {"big", "red"} <= set(table) and "large" in table["big"] and "crimson" in table["red"]


def test_shipped_synonyms_cover_the_shapes_captions():
    table = eda.load_synonyms()
    assert set(shapes.COLORS) <= set(table) and set(shapes.SHAPES) <= set(table)
    missing = shapes_caption_words() - eda.STOP_WORDS - set(table)
    assert not missing, sorted(missing)


def test_parse_synonyms_rejects_malformed_lines():
    assert eda.parse_synonyms("# comment\n\nbig\tlarge, huge\n") == {"big": ("large", "huge")}
    with pytest.raises(ValueError, match="line 1"):
        eda.parse_synonyms("big large")
    with pytest.raises(ValueError, match="listed twice"):
        eda.parse_synonyms("big\tlarge\nbig\thuge")


# -- the pipeline -------------------------------------------------------------


def test_declip_views_layout_second_crop_and_eda_captions():
    batches = take(make().iterator(), 2)
    augmented_rows = other_views = 0
    for b, batch in enumerate(batches):
        assert set(batch) == {"images", "tokens", "images_2", "tokens_aug"}
        assert batch["images_2"].shape == batch["images"].shape == (8, 32, 32, 3)
        assert batch["images_2"].dtype == np.float32 and batch["tokens_aug"].dtype == np.int32
        assert batch["tokens_aug"].shape == batch["tokens"].shape == (8, 96)
        assert np.all(batch["images_2"] >= LOW - 1e-5) and np.all(batch["images_2"] <= HIGH + 1e-5)
        other_views += sum(not np.array_equal(a, b) for a, b in zip(batch["images"], batch["images_2"], strict=True))
        for row, (caption, augmented) in enumerate(
            zip(detokenize(batch["tokens"]), detokenize(batch["tokens_aug"]), strict=True)
        ):
            m = 8 * b + row  # one stream, nothing dropped: the example index
            assert augmented == pipeline_module.augmented_caption(caption, 0, 0, m)
            assert is_eda_of(augmented, caption, eda.load_synonyms()), (caption, augmented)
            augmented_rows += augmented != caption.lower()
    assert augmented_rows > 8
    assert other_views >= 12  # of 16 (a crop may repeat the first one's window and not flip)


def test_eda_captions_are_seeded_by_stream_and_example():
    (batch,) = take(make(num_streams=2).iterator(), 1)  # rows 0-3 from stream 0, rows 4-7 from stream 1
    captions, augmented = detokenize(batch["tokens"]), detokenize(batch["tokens_aug"])
    for row in range(8):
        stream, m = divmod(row, 4)
        assert augmented[row] == pipeline_module.augmented_caption(captions[row], 0, stream, m)


def test_second_view_of_a_full_crop_is_the_image_flipped_or_not():
    full = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    batches = take(make(**full).iterator(), 3)
    plain = take(make(**full, declip_views=False).iterator(), 3)
    flipped = 0
    for batch, without in zip(batches, plain, strict=True):
        np.testing.assert_array_equal(batch["images"], without["images"])  # the first view is untouched
        np.testing.assert_array_equal(batch["tokens"], without["tokens"])
        for first, second in zip(batch["images"], batch["images_2"], strict=True):
            if np.array_equal(second, first[:, ::-1]):
                flipped += 1
            else:
                np.testing.assert_array_equal(second, first)
    assert 4 <= flipped <= 20  # of 24: a fair coin per example


def test_declip_views_are_deterministic_and_resume_exactly():
    full_it = make().iterator()
    full, states = [], []
    for _ in range(6):  # past the 40 examples of the first epoch
        full.append(next(full_it))
        states.append(json.loads(json.dumps(full_it.get_state())))
    assert_same_batches(full[:3], take(make().iterator(), 3))
    for k in (0, 3):
        assert_same_batches(full[k + 1 :], take(make().iterator(states[k]), 5 - k))
    other = next(make(seed=1).iterator())
    assert not np.array_equal(other["images_2"], full[0]["images_2"])


def test_decode_failures_drop_the_example_from_both_views(tmp_path):
    members = [m for i in range(5) for m in sample_members(i, image=corrupt_jpeg(i) if i == 2 else None)]
    write_tar(str(tmp_path / "00000.tar"), members)
    it = make(f"wds:{tmp_path}/00000.tar", batch_size=2, image_size=16, shuffle_buffer=5).iterator()
    batches = take(it, 4)  # two epochs of the 4 good examples
    names = sorted(n for batch in batches for n in detokenize(batch["tokens"]))
    assert names == sorted(["r0", "r1", "r3", "r4"] * 2)
    for batch in batches:
        np.testing.assert_array_equal(batch["tokens_aug"], batch["tokens"])  # EDA of one word is that word
        assert batch["images_2"].shape == (2, 16, 16, 3)
    assert it.error_counts()["bad_image"] >= 1  # the first epoch's (the second's may come after batch 4)


def test_without_declip_views_the_batch_is_unchanged_and_evaluation_refuses_them():
    batch = next(make(declip_views=False).iterator())
    assert set(batch) == {"images", "tokens"}
    with pytest.raises(ValueError, match="declip_views"):
        make(training=False)
    with pytest.raises(ValueError, match="declip_views"):
        make(text=False)
