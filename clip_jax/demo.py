"""A first look: tokenize captions, build a small CLIP, print its similarity matrix.

    python -m clip_jax.demo [--model ViT-Tiny-8]

Weights are random (nothing is downloaded), so the similarities only show the
shapes and the call path; `clip_jax.import_weights` brings trained weights.
"""
from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import numpy as np

import clip_jax

CAPTIONS = ["a red circle", "a blue square", "a green triangle"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-Tiny-8", choices=clip_jax.list_models())
    args = parser.parse_args()
    model = clip_jax.create_model(args.model)
    size = model.visual.image_size
    tokens = clip_jax.tokenizers.ClipTokenizer()(CAPTIONS)
    images = np.random.default_rng(0).standard_normal((len(CAPTIONS), size, size, 3)).astype(np.float32)
    variables = jax.jit(model.init)(jax.random.key(0), images, tokens)
    count = sum(x.size for x in jax.tree.leaves(nn.meta.unbox(variables["params"])))
    forward = jax.jit(model.apply)
    start = time.perf_counter()
    out = jax.block_until_ready(forward(variables, images, tokens))
    seconds = time.perf_counter() - start
    print(f"{args.model}: {count:,} parameters, {size}px images, tokens {tokens.shape}; "
          f"first forward (with compile) {seconds:.1f} s on {jax.devices()[0].platform}")
    print("first caption's token ids:", tokens[0][: int(np.argmax(tokens[0])) + 1].tolist())
    similarity = np.asarray(out["logit_scale"] * out["image_embeds"] @ out["text_embeds"].T)
    print("scaled cosine similarity, images x captions (random weights):")
    for caption, row in zip(CAPTIONS, similarity):
        print(f"  image of {caption!r:20} " + " ".join(f"{v:7.3f}" for v in row))


if __name__ == "__main__":
    main()
