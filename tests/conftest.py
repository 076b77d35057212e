"""Test setup, before jax is imported: eight simulated CPU devices, and one compilation cache per session.

Many tests start `python -m clip_jax.main` or worker processes that compile the same programs
(a run and its resumption, the processes of one multi-host run, runs of one config); JAX's
persistent compilation cache in a directory of this session lets each program compile once.
A cached executable is the one a fresh compile would build, so results do not change.
"""
import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="clip_jax_tests_xla_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache  # inherited by every process the tests start
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
