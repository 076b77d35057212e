"""Training: the loop (`loop`), the sharded step (`train_step`), its state (`train_state`), the
optimizer (`optim`), checkpoints (`checkpointing`), metric writers (`metric_logging`), model FLOPs
(`flops`), and the methods the step trains (`objectives/`: one class per `config.loss` behind the
`objectives.protocol.Objective` protocol: CLIP, SigLIP, CLIP-Lite, DeCLIP, LiMBeR, the caption LM;
FLIP's masking in `objectives/flip`). A new method is a module in `objectives/` and one entry in
`objectives.OBJECTIVES`."""
