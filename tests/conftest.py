"""Shared pytest set-up."""

import tempfile

import pytest


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
