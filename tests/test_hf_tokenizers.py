"""The "hf:DIR" tokenizers against the ids transformers gives, recorded by tests/fixtures/make_hf_tokenizer_fixtures.py.

(a) CLIP's BPE in files written by write_clip_tokenizer_files: read as ClipTokenizer, equal to transformers'
    rows up to their first EOT (transformers pads with 49407 after it, clip_jax with 0), except on the texts
    the fixture lists as cleaned differently; (b) a SentencePiece SiglipTokenizer directory and (c) a
    tokenizer.json directory: equal to transformers' rows, padding included.
"""
import json
import os
import shutil

import numpy as np
import pytest

from clip_jax.tokenizers import (
    ClipTokenizer,
    HfFastTokenizer,
    HfSiglipTokenizer,
    copy_tokenizer_files,
    get_tokenizer,
    pretrained_tokenizer_spec,
    write_clip_tokenizer_files,
)
from clip_jax.tokenizers.pretrained_dir import clip_vocab, pretrained_tokenizer_kind

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
with open(os.path.join(FIXTURES, "hf_tokenizer_ids.json"), encoding="utf-8") as f:
    FIXTURE = json.load(f)
LENGTHS = FIXTURE["context_lengths"]
SIGLIP_DIR = os.path.join(FIXTURES, FIXTURE["siglip"]["directory"])
FAST_DIR = os.path.join(FIXTURES, FIXTURE["fast"]["directory"])


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> str:
    directory = str(tmp_path_factory.mktemp("hf_clip"))
    write_clip_tokenizer_files(directory, context_length=77)
    return directory


def test_clip_files(clip_dir):
    with open(os.path.join(clip_dir, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    assert len(vocab) == 49408 and vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert vocab["!"] == 0 and vocab["!</w>"] == 256
    with open(os.path.join(clip_dir, "merges.txt"), encoding="utf-8") as f:
        merges = f.read().split("\n")
    assert merges[0] == "#version: 0.2" and merges[1] == "i n" and len(merges) == 1 + 48894 + 1  # trailing newline
    assert all(vocab["".join(m.split(" "))] == 512 + i for i, m in enumerate(merges[1:-1]))
    with open(os.path.join(clip_dir, "tokenizer_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    assert config["tokenizer_class"] == "CLIPTokenizer" and config["model_max_length"] == 77
    assert config["pad_token"] == config["eos_token"] == "<|endoftext|>"


@pytest.mark.parametrize("length", LENGTHS)
def test_clip_matches_transformers_up_to_padding(clip_dir, length):
    recorded = FIXTURE["clip"]
    assert (recorded["bos_id"], recorded["eos_id"], recorded["pad_id"]) == (49406, 49407, 49407)
    tokenizer = get_tokenizer(f"hf:{clip_dir}", length)
    assert type(tokenizer) is ClipTokenizer and tokenizer.context_length == length
    rows = tokenizer(recorded["texts"])
    cases = zip(recorded["texts"], rows.tolist(), recorded["ids"][str(length)], recorded["lengths"][str(length)])
    for text, row, theirs, n in cases:
        assert theirs[n - 1] == 49407 and set(theirs[n:]) <= {49407}, text  # transformers pads with EOT ...
        theirs = theirs[:n] + [0] * (length - n)  # ... where clip_jax pads with 0
        if text in recorded["clip_jax_differs"]:
            assert row != theirs, (text, recorded["clip_jax_differs"][text])
        else:
            assert row == theirs, text


def test_clip_spec_resolves_to_clip(clip_dir, tmp_path):
    assert pretrained_tokenizer_kind(clip_dir) == "clip" and pretrained_tokenizer_spec(clip_dir) == "clip"
    # transformers 5 saves a CLIP tokenizer as tokenizer.json alone: its BPE vocabulary is read from there
    model = {"type": "BPE", "vocab": clip_vocab(), "merges": []}
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": model}), encoding="utf-8")
    assert pretrained_tokenizer_spec(str(tmp_path)) == "clip"
    assert type(get_tokenizer(f"hf:{tmp_path}", 16)) is ClipTokenizer


@pytest.mark.parametrize(
    "kind, cls, directory", [("siglip", HfSiglipTokenizer, SIGLIP_DIR), ("fast", HfFastTokenizer, FAST_DIR)]
)
@pytest.mark.parametrize("length", LENGTHS)
def test_matches_transformers(kind, cls, directory, length):
    recorded = FIXTURE[kind]
    tokenizer = get_tokenizer(f"hf:{directory}", length)
    assert type(tokenizer) is cls and tokenizer.context_length == length and tokenizer.pad_id == recorded["pad_id"]
    rows = tokenizer(recorded["texts"])
    assert rows.dtype == np.int32 and rows.shape == (len(recorded["texts"]), length)
    cases = zip(recorded["texts"], rows.tolist(), recorded["ids"][str(length)], recorded["lengths"][str(length)])
    for text, row, theirs, n in cases:
        assert row == theirs and set(row[n:]) <= {tokenizer.pad_id}, text
    np.testing.assert_array_equal(tokenizer(recorded["texts"][0]), rows[:1])


def test_siglip_layout():
    recorded = FIXTURE["siglip"]
    assert (recorded["pad_id"], recorded["eos_id"], recorded["bos_id"]) == (1, 1, None)  # SigLIP pads with EOS
    tokenizer = HfSiglipTokenizer(SIGLIP_DIR, 8)
    assert tokenizer.eos_id == tokenizer.pad_id == 1 and tokenizer.special_ids == (1,) and tokenizer.vocab_size == 300
    ids = tokenizer.encode("A photo, of a CAT!")
    assert ids == tokenizer.encode("a photo of a cat") and 1 not in ids  # lowercased, punctuation dropped
    assert tokenizer.decode(ids) == "a photo of a cat"
    np.testing.assert_array_equal(tokenizer("a photo of a cat"), [[*ids, 1, *[1] * (7 - len(ids))]])
    long = tokenizer.encode(" ".join(["red car"] * 10))
    np.testing.assert_array_equal(tokenizer(" ".join(["red car"] * 10)), [[*long[:7], 1]])  # cut, EOS last


def test_fast_layout():
    recorded = FIXTURE["fast"]
    tokenizer = HfFastTokenizer(FAST_DIR, 20)
    bos, eos, pad = recorded["bos_id"], recorded["eos_id"], recorded["pad_id"]
    assert (bos, eos, pad) == (1, 2, 3) and tokenizer.special_ids == (bos, eos, pad) and tokenizer.vocab_size == 400
    ids = tokenizer.encode("a photo of a cat")
    assert tokenizer.decode(ids) == " a photo of a cat"
    np.testing.assert_array_equal(tokenizer("a photo of a cat"), [[bos, *ids, eos, *[pad] * (18 - len(ids))]])
    long = tokenizer.encode(" ".join(["red car"] * 10))
    np.testing.assert_array_equal(tokenizer(" ".join(["red car"] * 10)), [[bos, *long[:18], eos]])  # EOS last


def test_siglip_tokenizer_class_wins_over_tokenizer_json(tmp_path):
    """A directory with both files is read as transformers reads it: SiglipTokenizer uses spiece.model."""
    copy_tokenizer_files(SIGLIP_DIR, str(tmp_path))
    shutil.copy(os.path.join(FAST_DIR, "tokenizer.json"), tmp_path / "tokenizer.json")
    assert pretrained_tokenizer_kind(str(tmp_path)) == "sentencepiece"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<pad>"}), encoding="utf-8")
    assert pretrained_tokenizer_kind(str(tmp_path)) == "tokenizer.json"


@pytest.mark.parametrize("source", [SIGLIP_DIR, FAST_DIR])
def test_copy_tokenizer_files(tmp_path, source):
    target = tmp_path / "copy"
    names = copy_tokenizer_files(source, str(target))
    assert names and sorted(names) == sorted(os.listdir(source)) == sorted(os.listdir(target))
    texts = FIXTURE["siglip"]["texts"]
    np.testing.assert_array_equal(get_tokenizer(f"hf:{target}", 16)(texts), get_tokenizer(f"hf:{source}", 16)(texts))


def test_copy_clip_files(clip_dir, tmp_path):
    assert copy_tokenizer_files(clip_dir, str(tmp_path)) == [
        "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"
    ]
    assert pretrained_tokenizer_spec(str(tmp_path)) == "clip"


def test_no_tokenizer_files(tmp_path):
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0, "b": 1}), encoding="utf-8")  # not CLIP's
    for directory in (str(tmp_path), str(tmp_path / "missing")):
        for call in (lambda: get_tokenizer(f"hf:{directory}", 16), lambda: copy_tokenizer_files(directory, "unused")):
            with pytest.raises(FileNotFoundError) as error:
                call()
            message = str(error.value)
            assert directory in message
            assert all(name in message for name in ("tokenizer.json", "spiece.model", "vocab.json", "merges.txt"))
    with pytest.raises(ValueError, match="hf:"):
        get_tokenizer("hf:", 16)


def test_unreadable_configs(tmp_path):
    shutil.copy(os.path.join(FAST_DIR, "tokenizer.json"), tmp_path / "tokenizer.json")
    with pytest.raises(ValueError, match="no pad_token"):  # transformers cannot pad without one either
        get_tokenizer(f"hf:{tmp_path}", 16)
    (tmp_path / "tokenizer_config.json").write_text('{"pad_token": "<nope>"}', encoding="utf-8")
    with pytest.raises(ValueError, match="'<nope>' is not in tokenizer.json"):
        get_tokenizer(f"hf:{tmp_path}", 16)
    (tmp_path / "tokenizer_config.json").write_text('{"pad_token": ', encoding="utf-8")
    with pytest.raises(ValueError, match="tokenizer_config.json' is not valid JSON"):
        get_tokenizer(f"hf:{tmp_path}", 16)
    siglip = tmp_path / "siglip"
    copy_tokenizer_files(SIGLIP_DIR, str(siglip))
    (siglip / "tokenizer_config.json").write_text('{"legacy": false}', encoding="utf-8")
    with pytest.raises(ValueError, match="legacy=false"):
        get_tokenizer(f"hf:{siglip}", 16)
