"""Test setup, before jax is imported: eight simulated CPU devices, fast compiles, one compilation cache
per session, and the two tiers: the tests in tests/integration/ are marked `integration`, which the default run
(pytest.ini) leaves out.

Many tests start `python -m clip_jax.main` or worker processes that compile the same programs
(a run and its resumption, the processes of one multi-host run, runs of one config); JAX's
persistent compilation cache in a directory of this session lets each program compile once.
A cached executable is the one a fresh compile would build, so results do not change.
"""
import atexit
import os
import shutil
import tempfile

import pytest

# The in-process tests compile hundreds of small programs and run each a few times: with LLVM's optimisation
# level 0, XLA's CPU backend compiles them faster than it loses in running them (measured on 2 cores: the
# default tier 606 -> 531 s). Only float32 rounding changes, and the tier passes at both levels (both sides
# of each comparison are compiled alike). tests/integration/conftest.py drops it for the processes the
# integration tests start, which train hundreds of steps (there it makes a step 1.8x as long).
FAST_COMPILE = "--xla_backend_optimization_level=0"
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {FAST_COMPILE}")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="clip_jax_tests_xla_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache  # inherited by every process the tests start
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)


INTEGRATION = os.path.join(os.path.dirname(os.path.abspath(__file__)), "integration")


@pytest.hookimpl(tryfirst=True)  # before `-m` selects: every test under tests/integration/ is `integration`
def pytest_collection_modifyitems(items):
    for item in items:
        if str(item.path).startswith(INTEGRATION + os.sep):
            item.add_marker(pytest.mark.integration)
