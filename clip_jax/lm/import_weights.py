r"""Imports Hugging Face GPT-2 / GPT-J PyTorch weights into a clip_jax weights directory.

    python -m clip_jax.lm.import_weights --checkpoint pytorch_model.bin --model gpt2 --output /path/gpt2

Reads .bin / .pt / .safetensors / .npz like `clip_jax.import_weights`. Load
the result with `clip_jax.weights.storage.load_variables(DIR)` and
`clip_jax.lm.create_lm(metadata["model"], **metadata["overrides"])`.
"""
from __future__ import annotations

import argparse
import json

from clip_jax.import_weights import read_state_dict
from clip_jax.lm.convert import from_hf_state_dict
from clip_jax.lm.registry import create_lm
from clip_jax.runtime import paths
from clip_jax.weights.storage import save_variables


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="transformers .bin/.pt/.safetensors or .npz file")
    parser.add_argument("--model", required=True, help="clip_jax.lm name, e.g. gpt2 or gpt-j-6b")
    parser.add_argument("--output", required=True, help="directory for the Orbax checkpoint")
    parser.add_argument("--overrides", default="{}", help="JSON of create_lm overrides")
    args = parser.parse_args(argv)
    overrides = json.loads(args.overrides)
    variables = from_hf_state_dict(read_state_dict(args.checkpoint), create_lm(args.model, **overrides))
    source = str(paths.resolve(args.checkpoint))
    metadata = {"model": args.model, "overrides": overrides, "source": source, "kind": "lm"}
    save_variables(args.output, variables, metadata)
    print(f"wrote {args.model} weights to {args.output}")


if __name__ == "__main__":
    main()
