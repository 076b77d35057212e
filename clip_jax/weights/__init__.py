"""Model weights in and out: clip_jax's own storage (`storage`: an Orbax checkpoint of variables plus
the model they belong to) and the OpenAI / open_clip PyTorch layout (`open_clip`). The commands
`python -m clip_jax.import_weights` and `python -m clip_jax.export_weights` use them."""
