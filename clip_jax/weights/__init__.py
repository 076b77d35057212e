"""Model weights in and out: clip_jax's own storage (`storage`: an Orbax checkpoint of variables plus
the model they belong to), loading weights into a fresh train state (`into_state`: a tower, either
layer layout), the OpenAI / open_clip PyTorch layout (`open_clip`) and Hugging Face GPT-2 / GPT-J
(`hf_lm`). The commands `python -m clip_jax.import_weights` and `python -m clip_jax.export_weights`
use them."""
