"""host_memory: the command-line programs restart once under glibc's huge-page malloc."""

import pytest

from clip_jax.runtime import host_memory

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
