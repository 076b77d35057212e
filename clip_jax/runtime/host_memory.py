"""Huge pages for the host's large allocations: the command-line programs restart once under glibc's
transparent-huge-page malloc.

XLA's CPU runtime takes each step's temporary buffers from malloc, and glibc maps every allocation
above 32 MiB anew, so the kernel faults the buffers in, 4 KiB at a time, on every step: 609k page
faults a ViT-B-32 train step at batch 16 (2.4 GB), 1.34M an RN50 one, 10-25% of the CPU time spent in
the kernel. With `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (glibc 2.35 and later) malloc asks for
transparent huge pages on those mappings: about 3k faults a step, and ViT-B-32's step 11% faster,
RN50's 19% on a 2-core AMD EPYC (`benchmarks/open_clip_side_by_side.py --malloc "default,huge pages"`
measures both libraries either way). glibc reads its tunables when a process starts, so `reexec_with_huge_pages`
replaces the process with the same interpreter, options and arguments, the tunable added. It changes
nothing where the tunable is already set, off Linux or glibc, on an older glibc, or with
CLIP_JAX_HUGE_PAGES=0.
"""
from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping

TUNABLE = "glibc.malloc.hugetlb"
HUGE_PAGES = f"{TUNABLE}=1"  # the GLIBC_TUNABLES entry
OPT_OUT = "CLIP_JAX_HUGE_PAGES"
MIN_GLIBC = (2, 35)


def huge_pages_environment(environ: Mapping[str, str], system: str, libc: tuple[str, str]) -> dict[str, str] | None:
    """The environment to restart with (`environ` plus the tunable), or None where nothing is to change.

    system: `platform.system()`; libc: `platform.libc_ver()`, e.g. ('glibc', '2.36').
    """
    name, version = libc
    if system != "Linux" or name != "glibc" or environ.get(OPT_OUT) == "0":
        return None
    if tuple(int(part) for part in version.split(".")[:2] if part.isdigit()) < MIN_GLIBC:
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if f"{TUNABLE}=" in tunables:
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, [tunables, HUGE_PAGES]))}


def reexec_with_huge_pages() -> None:
    """Restarts this process under `huge_pages_environment`, where it changes anything; else returns.

    Call it first thing in a program's `__main__` block: what ran before is run again.
    """
    environment = huge_pages_environment(os.environ, platform.system(), platform.libc_ver())
    if environment is not None:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environment)
