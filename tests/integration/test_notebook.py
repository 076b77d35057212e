"""notebooks/quickstart.ipynb runs headless from top to bottom (nbclient, a python3 kernel, short training).

The kernel inherits this process's environment: 2 simulated CPU devices (so the notebook's
shard_map and data-parallel training run on more than one), a short training run through
CLIP_JAX_QUICKSTART_STEPS, and TMPDIR under pytest's tmp_path (the notebook's workdir is a
temporary directory). About 2.5 minutes on 2 CPU cores.
"""
import base64
import math
import re
from pathlib import Path

import nbclient
import nbformat

from runs import records

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "quickstart.ipynb"
STEPS = 100  # the loss leaves ln(64), the value of untrained (tied) logits at batch 64, near step 30
LM_STEPS, LIMBER_STEPS = 40, 20  # section 6 runs end to end; what the full configs reach is in their docstrings


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def _pngs(cell) -> list[bytes]:
    return [base64.b64decode(o["data"]["image/png"]) for o in cell.get("outputs", [])
            if o.get("output_type") == "display_data" and "image/png" in o.get("data", {})]


def _tagged(nb, tag: str):
    (cell,) = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    return cell


def test_notebook_is_saved_clean():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, "save the notebook with outputs cleared"


def test_notebook_runs_headless(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIP_JAX_QUICKSTART_STEPS", str(STEPS))
    monkeypatch.setenv("CLIP_JAX_QUICKSTART_LM_STEPS", str(LM_STEPS))
    monkeypatch.setenv("CLIP_JAX_QUICKSTART_LIMBER_STEPS", str(LIMBER_STEPS))
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(run_dir)}})
    client.execute()  # raises CellExecutionError, with the cell's traceback, on any error
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    out = "\n".join(_text(c) for c in nb.cells if c.cell_type == "code")

    assert "not on Colab" in out
    assert f"training steps: {STEPS}" in out
    assert "devices: [CpuDevice(id=0), CpuDevice(id=1)]" in out
    for name in ("clip_loss", "sigmoid_loss", "clip_lite_loss"):
        assert re.search(rf"^{name} +\d+\.\d+$", out, re.M), name
    sharded, single = map(float, re.search(r"clip_loss over 2 devices: (\S+) \(one device: (\S+)\)", out).groups())
    assert abs(sharded - single) <= 1e-4 * abs(single)

    # Training: the run's workdir under TMPDIR, and the printed loss went down.
    assert f"trained to step {STEPS}" in out
    workdir = Path(re.search(r"trained to step \d+ in (\S+)", out).group(1))
    assert workdir.is_relative_to(tmp_path) and (workdir / "metrics.jsonl").is_file()
    first, last = map(float, re.search(r"loss: (\S+) at step \d+ -> (\S+) at step " + str(STEPS), out).groups())
    assert first > math.log(64) - 0.1 and last < math.log(64) - 0.5, (first, last)  # it learned: ~4.2 -> ~2.0
    assert any("shapes_val/top1" in r for r in records(str(workdir)))
    curve = _pngs(_tagged(nb, "loss-curve"))
    assert len(curve) == 1 and curve[0].startswith(b"\x89PNG")

    # Zero-shot: one image per shape, probabilities summing to 1, and the figure.
    rows = re.findall(r"^true (\w+) +predicted (\w+) .*\| sum (\S+)$", out, re.M)
    assert sorted(true for true, _, _ in rows) == sorted(["circle", "square", "triangle", "diamond", "cross", "ring"])
    for _, _, total in rows:
        assert abs(float(total) - 1) < 1e-3
    bars = _pngs(_tagged(nb, "zero-shot"))
    assert len(bars) == 1 and bars[0].startswith(b"\x89PNG")

    assert "skipped: ViT-B-32.pt not found" in out

    # LiMBeR: the caption LM and the map trained (LiMBeR from section 3's run), its 4 evals, a caption per image.
    assert f"trained to step {LM_STEPS}" in out and f"trained to step {LIMBER_STEPS}" in out
    evals = re.findall(r"^(\w+): named (\S+), BLEU-4 (\S+), CIDEr (\S+)$", out, re.M)
    assert sorted(name for name, *_ in evals) == ["heldout_color", "heldout_shape", "val_color", "val_shape"]
    captioned = re.findall(r"^drawn as: (.+?) +\| captioned: (.*)$", out, re.M)
    assert len(captioned) == 6, captioned
    figure = _pngs(_tagged(nb, "captions"))
    assert len(figure) == 1 and figure[0].startswith(b"\x89PNG")
