r"""SigLIP So400m/14: the shape-optimised 400M ViT (Alabdulmohsin et al. 2023) with SigLIP's own text tower.

    python -m clip_jax.main --config=configs/siglip_so400m14.py --workdir=gs://bucket/siglip_so400m14 \
        --config.data.train='wds:/data/laion2b/{000000..231349}.tar' \
        --config.data.tokenizer=sentencepiece:/path/to/spm_32k.model

open_clip's ViT-SO400M-14-SigLIP (877,360,306 parameters): timm's MAP-pooled
ViT and a 27-layer bidirectional text tower of width 1152 read at its last
position, 16 tokens, trained with the pairwise sigmoid loss (temperature from
log 10, bias from -10, both learned), batch 32,768, AdamW lr 1e-3, weight
decay 1e-4, beta2 0.95: configs/siglip_b16.py's recipe. Parameters and optimizer
state are sharded over 16-device groups (FSDP), blocks are rematerialised,
and the loss runs blockwise. SigLIP's vocabulary is a 32,000-piece
SentencePiece model: pass one as above (the text tower takes its size); by
default the captions use CLIP's BPE and the tower gets its 49,408 ids. The
SigLIP paper's So400m/14 at 224 px (WebLI) reaches about 82% ImageNet
zero-shot top-1; on LAION-2B expect below that; not yet measured here.
"""
import os
import runpy

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = runpy.run_path(os.path.join(os.path.dirname(__file__), "siglip_b16.py"))["get_config"]()
    config.model = "ViT-SO400M-14-SigLIP"
    config.mesh.fsdp = 16
    config.remat_policy = "dots"
    config.data.context_length = 16
    config.data.train = "wds:/data/laion2b/{000000..231349}.tar"
    return config
