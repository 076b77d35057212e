r"""Exports clip_jax weights as an open_clip state dict (.safetensors, .pt or .npz) or a transformers model.

    python -m clip_jax.export_weights /path/weights_or_workdir out.safetensors
    python -m clip_jax.export_weights /path/weights_or_workdir OUT_DIR --format transformers

With `--format transformers`, OUT_DIR becomes a `save_pretrained` directory
(config.json, model.safetensors and the tokenizer's files where the vocabulary
has a transformers tokenizer: CLIP's BPE, or the files of the directory the
weights came from) that `CLIPModel.from_pretrained(OUT_DIR)` or
`SiglipModel.from_pretrained(OUT_DIR)` loads (`weights.hf_clip`). A model
transformers has no class for (a ModifiedResNet tower, CLIP-Lite's critics,
DeCLIP's heads) ends with one line naming the part.

DIR is a weights directory (import_weights, `weights.save_variables`), a
training run's workdir (its newest checkpoint), or any source `clip_jax.load`
reads (`weights.sources`). The output (a local path or
gs://...) holds `convert.to_torch_state_dict`: open_clip's names, layouts and
buffers, float32 unless --dtype says otherwise (bfloat16 has no numpy form in
safetensors or .npz). It prints the open_clip model to create and how to load
the file into it with strict=True; .pt needs torch, imported only for it.
"""
from __future__ import annotations

import argparse
import io
import json
import sys

import numpy as np

from clip_jax.models import create_model
from clip_jax.models.architectures import model_from_spec, model_spec
from clip_jax.runtime import paths
from clip_jax.tokenizers.pretrained_dir import copy_tokenizer_files, directory_of_spec, write_clip_tokenizer_files
from clip_jax.weights import hf_clip
from clip_jax.weights.open_clip import open_clip_name, to_torch_state_dict
from clip_jax.weights.sources import read_weights

FORMATS = (".safetensors", ".pt", ".npz")
# How PyTorch reads each format back, for the printed instructions.
_LOADERS = {
    ".safetensors": "safetensors.torch.load_file({path!r})",
    ".pt": "torch.load({path!r})",
    ".npz": "{{k: torch.from_numpy(v) for k, v in numpy.load({path!r}).items()}}",
}


def _format(output: str) -> str:
    suffix = next((s for s in FORMATS if output.endswith(s)), None)
    if suffix is None:
        raise ValueError(f"output {output!r}: the file name must end in one of {', '.join(FORMATS)}")
    return suffix


def serialize(state_dict: dict[str, np.ndarray], suffix: str) -> bytes:
    """The state dict as the bytes of a .safetensors, .pt or .npz file."""
    if suffix == ".safetensors":
        from safetensors.numpy import save

        return save(state_dict)
    buffer = io.BytesIO()
    if suffix == ".npz":
        np.savez(buffer, **state_dict)
    else:
        import torch  # only this format needs torch

        torch.save({k: torch.from_numpy(v) for k, v in state_dict.items()}, buffer)
    return buffer.getvalue()


def export_weights(directory: str, output: str, dtype: str = "float32", name: str | None = None) -> str:
    """Writes the weights in `directory` to `output` as an open_clip state dict; returns how to load it.

    name: the open_clip model name to print (default: `convert.open_clip_name` of the saved model).
    """
    suffix = _format(output)
    variables, metadata = read_weights(directory)
    overrides = metadata.get("overrides", {})
    model = create_model(metadata["model"], **overrides)
    state_dict = to_torch_state_dict(variables, model, np.dtype(dtype))
    path = paths.resolve(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(serialize(state_dict, suffix))
    name = name or open_clip_name(metadata["model"], overrides)
    if name is None:
        return (
            f"{metadata['model']} with overrides {json.dumps(overrides)} has no open_clip name: build "
            f"open_clip.model.CLIP(embed_dim, vision_cfg, text_cfg) of the same sizes, then load_state_dict("
            f"{_LOADERS[suffix].format(path=output)}, strict=True)"
        )
    bias = "" if model.init_logit_bias is None else f", init_logit_bias={model.init_logit_bias}"
    return (
        f"open_clip model {name}; load it in PyTorch with\n"
        f"  model = open_clip.create_model({name!r}{bias}); "
        f"model.load_state_dict({_LOADERS[suffix].format(path=output)}, strict=True)"
    )


def export_transformers(directory: str, output: str, dtype: str = "float32") -> str:
    """Writes the weights in `directory` to `output` as a transformers save_pretrained directory; returns how to
    load it. Raises hf_clip.UnsupportedPart naming a part transformers has no class for."""
    from safetensors.numpy import save

    variables, metadata = read_weights(directory)
    if (kind := metadata.get("kind", "clip")) != "clip":
        raise hf_clip.UnsupportedPart(
            f"{directory} holds a {kind!r} model; transformers' CLIPModel and SiglipModel are two-tower models"
        )
    spec = model_spec(metadata["model"], **metadata.get("overrides", {}))
    model = model_from_spec(spec)
    family = hf_clip.family_of_model(model)
    state_dict = hf_clip.to_transformers(variables, model, np.dtype(dtype))
    config = hf_clip.config_from_spec(spec, family, **(metadata.get("token_ids") or hf_clip.token_ids(spec, family)))
    path = paths.resolve(output)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({**config, "dtype": dtype}, indent=2) + "\n")
    (path / "model.safetensors").write_bytes(save(state_dict, metadata={"format": "pt"}))
    tokenizer = metadata.get("tokenizer", "clip")
    if tokenizer == "clip":
        write_clip_tokenizer_files(str(path), spec.text.context_length)
        note = "with CLIP's tokenizer files"
    elif (source := directory_of_spec(tokenizer)) is not None:
        copy_tokenizer_files(source, str(path))
        note = "with the tokenizer files of the directory the weights came from"
    elif tokenizer is None:
        note = "without tokenizer files: the weights came without a tokenizer"
    else:
        note = f"without tokenizer files: the vocabulary ({tokenizer}) has no transformers tokenizer"
    return f"transformers.{hf_clip.ARCHITECTURES[family]}.from_pretrained({output!r}) loads it ({note})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", help="weights directory (import_weights output) or a training run's workdir")
    parser.add_argument(
        "output",
        help=f"output file ending in {', '.join(FORMATS)} (local or gs://); with --format transformers a directory",
    )
    parser.add_argument(
        "--format", choices=("open_clip", "transformers"), default="open_clip",
        help="open_clip: a state dict file (default); transformers: a CLIPModel / SiglipModel directory",
    )
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16"), help="dtype of the tensors")
    parser.add_argument("--open-clip-name", help="open_clip model name to print (default: the saved model's)")
    args = parser.parse_args(argv)
    try:
        if args.format == "transformers":
            how = export_transformers(args.directory, args.output, args.dtype)
        else:
            how = export_weights(args.directory, args.output, args.dtype, args.open_clip_name)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"wrote {args.output}: {how}")


if __name__ == "__main__":
    main()
