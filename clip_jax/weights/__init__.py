"""Model weights in and out: clip_jax's own storage (`storage`: an Orbax checkpoint of variables plus
the model they belong to), one reader for every source a model can start from (`sources`: clip_jax's
own, transformers directories, big_vision .npz), loading weights into a fresh train state
(`into_state`: a tower, either layer layout), PyTorch state dicts given each parameter's name
(`torch_layout`) under OpenAI / open_clip's names (`open_clip`) and transformers' CLIPModel /
SiglipModel's (`hf_clip`), big_vision's SigLIP checkpoints (`big_vision`) and Hugging Face GPT-2 / GPT-J
(`hf_lm`). The commands `python -m clip_jax.import_weights` and `python -m clip_jax.export_weights`
use them."""
