"""Every recipe's train step lowers for CUDA and for TPU on a CPU (`jax.export`), so a CPU-only primitive or
lowering reaches no accelerator: it fails here, not on a pod.

Each recipe in configs/ keeps its objective, model family (widths, heads, patch, image size, vocabulary,
activation), dtype, remat policy, loss implementation, micro-batches, FLIP masks and tokenizer; what changes
is what lowering time grows with and the hardware it needs: one block per tower (per ResNet stage), a
batch of 16 per device group, and a mesh of this machine's 8 devices with the recipe's FSDP split where it fits.
"""
import glob
import os
import runpy

import jax
import pytest

from clip_jax.config.validation import validate
from clip_jax.runtime import sharding
from clip_jax.training import train_step
from clip_jax.training.objectives import objective_class

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(os.path.basename(path)[:-3] for path in glob.glob(os.path.join(REPO, "configs", "*.py")))
PLATFORMS = ("cuda", "tpu")
# Custom calls that only a CPU backend implements: LAPACK, host callbacks.
CPU_ONLY_TARGETS = ("lapack_", "cpu_callback", "xla_ffi_python_cpu_callback")


def shrunk_config(recipe: str):
    """The recipe's config with one block per tower, batch 16 per device group and an 8-device mesh."""
    config = runpy.run_path(os.path.join(REPO, "configs", f"{recipe}.py"))["get_config"]()
    if config.loss in ("causal_lm", "limber"):
        config.lm.overrides = {**config.lm.overrides, "layers": 1} if config.lm.overrides else {"layers": 1}
        config.limber.update(image_from="/unused", lm_from="/unused")  # no weights are read for lowering
    overrides = config.model_overrides.to_dict() if config.model_overrides else {}
    overrides.setdefault("text", {})["layers"] = 1
    overrides.setdefault("vision", {})["layers"] = (1, 1, 1, 1) if config.model.startswith("RN") else 1  # per stage
    config.model_overrides = overrides
    if config.data.tokenizer.startswith("sentencepiece:"):  # a user's file: the default BPE stands in
        config.data.tokenizer = "clip"
    fsdp = min(config.mesh.fsdp if config.mesh.fsdp > 0 else 8, 8)
    config.mesh.update(data=8 // fsdp, fsdp=fsdp, tensor=1)
    config.batch_size = 16 * config.num_microbatches * 8
    validate(config)
    return config


@pytest.mark.parametrize("recipe", RECIPES)
def test_train_step_lowers_for_cuda_and_tpu(recipe):
    config = shrunk_config(recipe)
    mesh = sharding.make_mesh(config.mesh)
    model, _ = objective_class(config).create_model(config)
    plan = train_step.plan_training(model, config, mesh, jax.random.key(0))
    assert len(plan.objectives) == (2 if config.flip.mask_ratio and config.flip.unmasked_steps else 1)  # FLIP: 2
    for ratio in plan.objectives:
        with sharding.activation_layout(mesh):
            exported = jax.export.export(plan.jitted_step(ratio), platforms=PLATFORMS)(
                plan.abstract_state, plan.abstract_batch
            )
        assert exported.platforms == PLATFORMS and exported.nr_devices == 8
        module = exported.mlir_module()
        assert not [target for target in CPU_ONLY_TARGETS if target in module], recipe
