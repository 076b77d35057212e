"""Training: the loop (`loop`), the sharded step (`train_step`), its state (`train_state`), the
optimizer (`optim`), checkpoints (`checkpointing`), metric writers (`metric_logging`), model FLOPs
(`flops`), and the objectives the step trains (`objectives/`: CLIP, SigLIP, CLIP-Lite, DeCLIP, LiMBeR,
the caption LM; FLIP's masking in `objectives/flip`)."""
