"""The command-line programs as users start them: `python -m clip_jax.import_weights`, `clip_jax.export_weights`,
`clip_jax.tokenizers.sentencepiece_trainer`, and the restart under huge-page malloc that the programs make."""
import json
import os
import platform
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import clip_jax
from clip_jax.import_weights import read_state_dict
from clip_jax.runtime import host_memory
from clip_jax.tokenizers import SentencePieceTokenizer, train_sentencepiece
from clip_jax.weights.open_clip import from_torch_state_dict
from clip_jax.weights.storage import load_model
from runs import REPO
from test_convert import FIXTURE
from test_export import assert_bit_equal, save_weights
from test_parity import TOLERANCE, load_fixture
from test_tokenizers import write_captions


def command(*args: str) -> subprocess.CompletedProcess:
    """`python ARGS` from the repository, to the end; fails the test with its log unless it exits 0."""
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_import_weights_round_trip(tmp_path):
    """An open_clip state dict saved from DataParallel (keys prefixed `module.`) imports to the fixture's
    embeddings (the parity tolerance, test_parity.TOLERANCE)."""
    state_dict, ref, spec = load_fixture(FIXTURE)
    checkpoint = tmp_path / "weights.npz"
    np.savez(checkpoint, **{f"module.{k}": v for k, v in state_dict.items()})
    output = tmp_path / "imported"
    command(
        "-m", "clip_jax.import_weights", "--checkpoint", str(checkpoint), "--model", spec["name"],
        "--overrides", json.dumps(spec["overrides"]), "--output", str(output),
    )
    model, variables = load_model(str(output))
    image_embeds = model.apply(variables, ref["images"], method=model.encode_image)
    np.testing.assert_allclose(image_embeds, ref["image_embeds"], atol=TOLERANCE)


@pytest.mark.parametrize(
    "name, suffix, scan_layers, open_clip_name_flag",
    [("vit_small", ".safetensors", True, ["--open-clip-name", "MyCLIP"]), ("rn_small_quickgelu", ".npz", False, [])],
)
def test_export_weights_round_trip(tmp_path, name, suffix, scan_layers, open_clip_name_flag):
    variables, spec = save_weights(tmp_path / "weights", name, scan_layers)
    output = tmp_path / f"exported{suffix}"
    run = command("-m", "clip_jax.export_weights", str(tmp_path / "weights"), str(output), *open_clip_name_flag)
    if open_clip_name_flag:
        assert (
            f"model = open_clip.create_model('MyCLIP'); "
            f"model.load_state_dict(safetensors.torch.load_file('{output}'), strict=True)"
        ) in run.stdout
    else:
        assert "has no open_clip name" in run.stdout and "strict=True" in run.stdout
    model = clip_jax.create_model(spec["name"], **spec["overrides"], scan_layers=scan_layers)
    assert_bit_equal(from_torch_state_dict(read_state_dict(str(output)), model), variables)


def test_sentencepiece_trainer_writes_what_the_function_writes(tmp_path):
    captions = write_captions(tmp_path / "captions.txt")
    trained = train_sentencepiece(captions, str(tmp_path / "function" / "spm"), vocab_size=200, lowercase=True,
                                  character_coverage=1.0)
    prefix = str(tmp_path / "cli" / "spm")
    result = command(
        "-m", "clip_jax.tokenizers.sentencepiece_trainer", "--input", captions, "--output_prefix", prefix,
        "--vocab_size", "200", "--lowercase", "--character_coverage", "1.0",
    )
    assert result.stdout.strip().splitlines()[-1] == f"{prefix}.model"
    texts = ["a fluffy cat sleeping on the grass", "The old boat floating near a river."]
    np.testing.assert_array_equal(
        SentencePieceTokenizer(f"{prefix}.model", 16)(texts), SentencePieceTokenizer(trained, 16)(texts)
    )


# Restarts (a line before the restart and one after), then allocates and writes 256 MiB with malloc
# and prints the page faults that took.
PROGRAM = textwrap.dedent("""
    import ctypes, os, resource, sys
    print("started", flush=True)
    from clip_jax.runtime import host_memory
    host_memory.reexec_with_huge_pages()
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    size = 256 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ctypes.memset(libc.malloc(size), 1, size)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(os.environ.get("GLIBC_TUNABLES"), sys.argv[1:], faults)
""")
SMALL_PAGES = (256 << 20) // 4096
restarts = pytest.mark.skipif(host_memory.huge_pages_environment({}, platform.system(), platform.libc_ver()) is None,
                              reason="needs Linux with glibc 2.35 or later")


def environment_without_settings() -> dict[str, str]:
    """This process's environment less the tunables and the opt-out, so that a child decides for itself."""
    return {key: value for key, value in os.environ.items() if key not in ("GLIBC_TUNABLES", host_memory.OPT_OUT)}


def run_program(tmp_path, **environ) -> list[str]:
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    result = subprocess.run([sys.executable, "-u", str(script), "a", "--b=1"], capture_output=True, text=True,
                            env={**environment_without_settings(), **environ}, timeout=120, check=True)
    return result.stdout.splitlines()


def transparent_huge_pages() -> str:
    """The kernel's setting ('always', 'madvise' or 'never'), '' where there is none to read."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return ""


@restarts
def test_restarts_once_with_the_same_arguments_and_faults_in_huge_pages(tmp_path):
    lines = run_program(tmp_path)
    assert lines[:2] == ["started", "started"]  # the restart ran the program again, once
    restarted, faults = lines[2].rsplit(" ", 1)
    assert restarted == "glibc.malloc.hugetlb=1 ['a', '--b=1']"
    opted_out = run_program(tmp_path, CLIP_JAX_HUGE_PAGES="0")
    assert opted_out[0] == "started"
    kept, small_page_faults = opted_out[1].rsplit(" ", 1)
    assert kept == "None ['a', '--b=1']"
    setting = transparent_huge_pages()
    if setting == "madvise":  # huge pages only where malloc asks for them
        assert int(small_page_faults) >= SMALL_PAGES  # one fault per 4 KiB page written
    if setting in ("always", "madvise"):
        # 2 MiB pages: 128 faults where the kernel has them; half the small-page count leaves room for
        # parts it backs with 4 KiB pages when huge ones are short.
        assert int(faults) < SMALL_PAGES // 2, (faults, small_page_faults)


@restarts
@pytest.mark.parametrize("program", ["clip_jax.main", "clip_jax.evaluate"])
def test_programs_restart_before_importing_jax(program):
    """A launch imports JAX once, after the restart: the package and the programs' first lines leave it out."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", program, "--helpshort"], capture_output=True,
                            text=True, env=environment_without_settings(), timeout=300)
    imports = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")]
    assert imports.count("clip_jax.runtime.host_memory") == 2  # before the restart and after it
    assert imports.count("jax") == 1, result.stderr[-2000:]
