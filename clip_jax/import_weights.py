r"""Imports CLIP / SigLIP weights (OpenAI, open_clip, transformers, big_vision), or a Hugging Face GPT-2 /
GPT-J, into an Orbax checkpoint.

    python -m clip_jax.import_weights --checkpoint ViT-B-32.pt \
        --model ViT-B-32-quickgelu --output /path/vit_b32_openai
    python -m clip_jax.import_weights --checkpoint /path/siglip-base-patch16-224 --output /path/siglip_b16
    python -m clip_jax.import_weights --checkpoint webli_en_b16_224.npz --output /path/siglip_b16
    python -m clip_jax.import_weights --checkpoint model.safetensors --lm gpt2 --output /path/gpt2

A transformers CLIPModel / SiglipModel `save_pretrained` directory and a
big_vision SigLIP .npz carry their model (`clip_jax.weights.sources`): they
need no --model. The directory's tokenizer files are copied into the output's
`tokenizer/` folder, which loads with it.

Reads OpenAI's JIT archives, plain state dicts and open_clip training
checkpoints ({'state_dict': ...}, 'module.' prefixes) from .pt / .bin (torch
is imported only for these), .safetensors (needs the safetensors package)
or .npz files. The output loads with `clip_jax.weights.storage.load_model(DIR)` or
`--config.init_from=DIR` in training; `python -m clip_jax.export_weights DIR
out.safetensors` writes such a directory (or a run's workdir) back out as an
open_clip state dict. A language model (--lm, a clip_jax.lm name) is saved with
metadata kind "lm": LiMBeR's `config.limber.lm_from` takes the directory.
"""
from __future__ import annotations

import argparse
import json
from typing import Any, BinaryIO

import numpy as np
from etils import epath

from clip_jax.lm import create_lm
from clip_jax.models import create_model
from clip_jax.runtime import paths
from clip_jax.weights.hf_lm import from_hf_state_dict
from clip_jax.tokenizers.pretrained_dir import SPEC_PREFIX, copy_tokenizer_files, directory_of_spec
from clip_jax.weights.open_clip import from_torch_state_dict, is_openai_state_dict
from clip_jax.weights.sources import TOKENIZER_FOLDER, read_weights
from clip_jax.weights.storage import save_variables


def _strip_wrappers(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Unwraps {'state_dict': ...} training checkpoints and DistributedDataParallel's 'module.' prefix."""
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
        state_dict = state_dict["state_dict"]
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    return state_dict


def _read_torch(file: BinaryIO) -> dict[str, Any]:
    import torch  # only this file format needs torch

    try:
        state_dict = torch.jit.load(file, map_location="cpu").state_dict()
    except RuntimeError:  # not a TorchScript archive: a pickled state dict
        file.seek(0)
        state_dict = torch.load(file, map_location="cpu", weights_only=True)
    state_dict = _strip_wrappers(dict(state_dict))
    return {k: v.float().numpy() if hasattr(v, "numpy") else np.asarray(v) for k, v in state_dict.items()}


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """A checkpoint file (local or in a bucket) as a mapping of PyTorch names to numpy arrays."""
    if not epath.Path(path).is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    with epath.Path(path).open("rb") as file:
        if path.endswith(".npz"):
            with np.load(file) as data:
                return _strip_wrappers(dict(data))
        if path.endswith(".safetensors"):
            from safetensors.numpy import load

            return _strip_wrappers(load(file.read()))
        return _read_torch(file)


def carries_its_model(checkpoint: str) -> bool:
    """Whether `checkpoint` names its own model: a transformers directory, or an .npz (big_vision's layout;
    an open_clip state dict in .npz needs --model)."""
    return paths.resolve(checkpoint).is_dir() or checkpoint.endswith(".npz")


def import_converted(checkpoint: str, output: str) -> tuple[str, str]:
    """Writes a transformers directory or a big_vision .npz to `output`, with the directory's tokenizer files
    in `output`/tokenizer; returns (output, where the weights came from: "transformers" or "big_vision")."""
    variables, metadata = read_weights(checkpoint)
    if (source := directory_of_spec(metadata["tokenizer"])) is not None:
        copy_tokenizer_files(source, str(paths.resolve(output) / TOKENIZER_FOLDER))
        metadata = {**metadata, "tokenizer": f"{SPEC_PREFIX}{TOKENIZER_FOLDER}"}
    save_variables(output, variables, {**metadata, "source": str(paths.resolve(checkpoint))})
    return output, metadata["origin"]


def import_weights(checkpoint: str, model_name: str, output: str, overrides: dict[str, Any] | None = None) -> str:
    """Converts `checkpoint` for model `model_name` and writes it to `output`; returns `output`."""
    overrides = overrides or {}
    state_dict = read_state_dict(checkpoint)
    model = create_model(model_name, **overrides)
    origin = "openai" if is_openai_state_dict(state_dict) else None
    variables = from_torch_state_dict(state_dict, model, origin=origin)
    metadata = {"model": model_name, "overrides": overrides, "source": str(paths.resolve(checkpoint)), "origin": origin}
    save_variables(output, variables, metadata)
    return output


def import_lm_weights(checkpoint: str, lm_name: str, output: str, overrides: dict[str, Any] | None = None) -> str:
    """Converts a Hugging Face GPT-2 / GPT-J `checkpoint` for clip_jax.lm `lm_name` and writes it to `output`."""
    overrides = overrides or {}
    variables = from_hf_state_dict(read_state_dict(checkpoint), create_lm(lm_name, **overrides))
    metadata = {"model": lm_name, "overrides": overrides, "source": str(paths.resolve(checkpoint)), "kind": "lm"}
    save_variables(output, variables, metadata)
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--checkpoint", required=True,
        help="PyTorch .pt/.bin, .safetensors or .npz file, transformers directory or big_vision .npz",
    )
    name = parser.add_mutually_exclusive_group()
    name.add_argument("--model", help="clip_jax model name of CLIP weights, e.g. ViT-B-32-quickgelu")
    name.add_argument("--lm", help="clip_jax.lm name of Hugging Face LM weights, e.g. gpt2 or gpt-j-6b")
    parser.add_argument("--output", required=True, help="directory for the Orbax checkpoint")
    parser.add_argument("--overrides", default="{}", help="JSON of create_model (or, with --lm, create_lm) overrides")
    args = parser.parse_args(argv)
    if not (args.model or args.lm):
        if not carries_its_model(args.checkpoint):
            parser.error(f"--checkpoint {args.checkpoint}: a PyTorch state dict needs --model (or --lm)")
        output, origin = import_converted(args.checkpoint, args.output)
        print(f"wrote the {origin} weights to {output}; clip_jax.load({output!r}) loads them")
        return
    convert = import_lm_weights if args.lm else import_weights
    output = convert(args.checkpoint, args.lm or args.model, args.output, json.loads(args.overrides))
    print(f"wrote {args.lm or args.model} weights to {output}")


if __name__ == "__main__":
    main()
