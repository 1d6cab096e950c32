"""Shared pytest set-up."""

import os
import tempfile

# Most of the suite's time is XLA compiling small programs, not running them, and
# its optimization passes are most of the compiling: without them the suite takes
# about a fifth less (docs/RESULTS.md), and every test passes either way. Set here, before
# any test imports jax, and in the environment, so that the subprocesses some tests
# start inherit it; JAX_DISABLE_MOST_OPTIMIZATIONS=0 runs the suite optimized.
# The few tests that spend longer running than compiling are marked
# `xla_optimized` and run with the passes on.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

# Many tests compile the same programs again: each builds its own meta-step
# (new Python closures, so JAX's in-memory cache misses), and the fault tests'
# resumed processes compile what the killed one did. One persistent cache for
# the whole run, its pytest-xdist workers and their subprocesses (they inherit
# the variable) loads those instead. Fresh for each run and removed after it;
# a JAX_COMPILATION_CACHE_DIR already set is used as it is.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import atexit
  import shutil
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="metajax-tests-xla-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import jax  # noqa: E402
import pytest  # noqa: E402

_FLAG = "jax_disable_most_optimizations"  # JAX reads it from the variable above


@pytest.fixture(autouse=True)
def _xla_optimized_when_marked(request):
  # A JAX without the flag has no entry: the suite then runs optimized, only slower.
  if jax.config.values.get(_FLAG) and request.node.get_closest_marker("xla_optimized"):
    jax.config.update(_FLAG, False)
    try:
      yield
    finally:
      jax.config.update(_FLAG, True)
  else:
    yield


@pytest.fixture(autouse=True, scope="session")
def _tempfiles_under_pytest_basetemp(tmp_path_factory):
  """tensorflow-datasets leaves an empty `mkdtemp` folder behind each time a
  builder is made before its data is prepared (DatasetInfo looks for metadata
  there); the suite makes many. Keep them under pytest's own temporary
  folder, which pytest prunes, rather than in the system's."""
  previous = tempfile.tempdir
  tempfile.tempdir = str(tmp_path_factory.mktemp("tempfile"))
  yield
  tempfile.tempdir = previous
