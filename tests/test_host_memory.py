"""host_memory: the command-line programs restart once under glibc's huge-page malloc."""
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from clip_jax import host_memory

GLIBC = ("glibc", "2.36")


def test_adds_the_tunable_to_a_linux_glibc_environment():
    environment = host_memory.huge_pages_environment({"PATH": "/bin"}, "Linux", GLIBC)
    assert environment == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


def test_keeps_the_tunables_already_set():
    environment = host_memory.huge_pages_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "Linux", GLIBC)
    assert environment["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"


@pytest.mark.parametrize("environ, system, libc", [
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "Linux", GLIBC),  # the user's own choice stands
    ({"CLIP_JAX_HUGE_PAGES": "0"}, "Linux", GLIBC),  # opted out
    ({}, "Darwin", ("", "")),
    ({}, "Linux", ("musl", "1.2.4")),
    ({}, "Linux", ("glibc", "2.31")),  # no hugetlb tunable before 2.35
])
def test_changes_nothing(environ, system, libc):
    assert host_memory.huge_pages_environment(environ, system, libc) is None


# Restarts (a line before the restart and one after), then allocates and writes 256 MiB with malloc
# and prints the page faults that took.
PROGRAM = textwrap.dedent("""
    import ctypes, os, resource, sys
    print("started", flush=True)
    from clip_jax import host_memory
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
    assert imports.count("clip_jax.host_memory") == 2  # before the restart and after it
    assert imports.count("jax") == 1, result.stderr[-2000:]
