r"""Trains a SentencePiece model on captions, with the id layout clip_jax expects.

    python -m clip_jax.tokenizers.sentencepiece_trainer \
        --input captions.txt --vocab_size 8000 --output_prefix DIR/spm

Reads one caption per line and writes DIR/spm.model and DIR/spm.vocab with
pad 0, unk 1, bos 2, eos 3 (see `SentencePieceTokenizer`).
"""
from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Sequence

import sentencepiece as spm
from etils import epath

from clip_jax.runtime import paths

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


def _local_copy(path: str, scratch: str) -> str:
    """`path` itself if local, else a copy in `scratch`: SentencePiece reads local files only."""
    if not paths.is_remote(path):
        return path
    return os.fspath(epath.Path(path).copy(epath.Path(scratch) / "input.txt"))


def train_sentencepiece(
    input_file: str,
    output_prefix: str,
    vocab_size: int,
    *,
    lowercase: bool = False,
    character_coverage: float = 0.9995,
    model_type: str = "unigram",
    max_sentences: int = 10_000_000,
    verbose: bool = False,
) -> str:
    """Trains on `input_file` (one caption per line); returns the path of the .model file.

    Args:
      input_file: UTF-8 text file, one caption per line (local or in a bucket).
      output_prefix: writes `{output_prefix}.model` and `{output_prefix}.vocab`
        (local or in a bucket); missing parent directories are created.
      vocab_size: exact number of pieces, special ids included.
      lowercase: case-fold during normalisation (NFKC + case folding), so the
        model itself lowercases every text it encodes.
      character_coverage: share of characters covered by the vocabulary; rarer
        ones map to unk (use 1.0 for small alphabets, ~0.9995 for CJK-rich text).
      model_type: "unigram", "bpe", "char" or "word".
      max_sentences: train on a random sample of at most this many lines.
      verbose: print SentencePiece's training log to stderr.
    """
    if not epath.Path(input_file).is_file():
        raise FileNotFoundError(f"caption file not found: {input_file!r}")
    output = paths.resolve(output_prefix)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch, open(os.devnull, "w") as devnull:
        spm.SentencePieceTrainer.train(
            input=_local_copy(input_file, scratch),
            model_prefix=os.path.join(scratch, "spm"),
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            normalization_rule_name="nmt_nfkc_cf" if lowercase else "nmt_nfkc",
            input_sentence_size=max_sentences,
            shuffle_input_sentence=True,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            logstream=None if verbose else devnull,
        )
        for suffix in (".model", ".vocab"):
            epath.Path(scratch, f"spm{suffix}").copy(f"{output}{suffix}", overwrite=True)
    return f"{output_prefix}.model"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="text file, one caption per line")
    parser.add_argument("--output_prefix", required=True, help="writes PREFIX.model and PREFIX.vocab")
    parser.add_argument("--vocab_size", type=int, default=8000)
    parser.add_argument("--lowercase", action="store_true", help="case-fold texts (in the model's normaliser)")
    parser.add_argument("--character_coverage", type=float, default=0.9995)
    parser.add_argument("--model_type", default="unigram", choices=["unigram", "bpe", "char", "word"])
    parser.add_argument("--max_sentences", type=int, default=10_000_000, help="sample at most this many lines")
    parser.add_argument("--verbose", action="store_true", help="show SentencePiece's training log")
    args = parser.parse_args(argv)
    model_file = train_sentencepiece(
        args.input,
        args.output_prefix,
        args.vocab_size,
        lowercase=args.lowercase,
        character_coverage=args.character_coverage,
        model_type=args.model_type,
        max_sentences=args.max_sentences,
        verbose=args.verbose,
    )
    print(model_file)


if __name__ == "__main__":
    main()
