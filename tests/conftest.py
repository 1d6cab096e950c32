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
