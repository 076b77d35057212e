r"""Exports clip_jax weights as an open_clip state dict (.safetensors, .pt or .npz).

    python -m clip_jax.export_weights /path/weights_or_workdir out.safetensors

DIR is a weights directory (import_weights, `weights.save_variables`) or a
training run's workdir (its newest checkpoint). The output (a local path or
gs://...) holds `convert.to_torch_state_dict`: open_clip's names, layouts and
buffers, float32 unless --dtype says otherwise (bfloat16 has no numpy form in
safetensors or .npz). It prints the open_clip model to create and how to load
the file into it with strict=True; .pt needs torch, imported only for it.
"""
from __future__ import annotations

import argparse
import io
import json

import numpy as np

from clip_jax.models import create_model
from clip_jax.runtime import paths
from clip_jax.weights.open_clip import open_clip_name, to_torch_state_dict
from clip_jax.weights.storage import load_variables

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
    variables, metadata = load_variables(directory)
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", help="weights directory (import_weights output) or a training run's workdir")
    parser.add_argument("output", help=f"output file ending in {', '.join(FORMATS)} (local or gs://)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16"), help="dtype of the tensors")
    parser.add_argument("--open-clip-name", help="open_clip model name to print (default: the saved model's)")
    args = parser.parse_args(argv)
    try:
        how = export_weights(args.directory, args.output, args.dtype, args.open_clip_name)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    print(f"wrote {args.output}: {how}")


if __name__ == "__main__":
    main()
