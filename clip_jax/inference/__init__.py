"""Using a trained model: `pretrained` (`clip_jax.load`: embed, classify zero-shot), `captioner`
(`clip_jax.load_captioner`: LiMBeR captions) and `images` (OpenAI's preprocessing of single images
with PIL)."""
