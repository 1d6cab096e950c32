"""Raw inputs of the builders: a folder, a .zip or a .tar.gz, read file by file.

Any failure to read an archive or decode an image is a `DataError` that names
the file and, inside an archive, the member. Builders raise it while tfds is
still writing into its `*.incomplete*` directory, which tfds then deletes: a
failed preparation never leaves a dataset that a later load would trust.
"""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
import zlib
from typing import Iterator

import numpy as np
from PIL import Image

ARCHIVE_SUFFIXES = (".zip", ".tar.gz")
# Errors that zipfile / tarfile / gzip raise on truncated or corrupt input.
_ARCHIVE_ERRORS = (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, OSError)
# Errors that PIL raises on undecodable images (UnidentifiedImageError is an OSError).
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


class DataError(ValueError):
  """Missing, corrupt or inconsistent input data; the message names the file."""


def find_source(folder, stem: str) -> str | None:
  """folder/stem (a directory), folder/stem.zip or folder/stem.tar.gz: the first that exists."""
  for candidate in (stem,) + tuple(stem + s for s in ARCHIVE_SUFFIXES):
    path = os.path.join(os.fspath(folder), candidate)
    if os.path.isdir(path) if candidate == stem else os.path.isfile(path):
      return path
  return None


def _skipped(name: str) -> bool:
  """macOS resource forks, which some re-zipped copies carry."""
  return "__MACOSX" in name or os.path.basename(name).startswith("._")


def iter_files(source: str, suffix: str) -> Iterator[tuple[str, bytes]]:
  """(name, bytes) of every file ending in `suffix` (case-insensitive).

  A directory yields names relative to its parent in sorted order (so a
  folder `images_background` gives the same names as its zip); an archive
  yields member names in archive order, whatever the file is called (the
  format is read from its first bytes: tfds downloads get hashed names).
  """
  suffix = suffix.lower()
  if os.path.isdir(source):
    parent = os.path.dirname(os.path.abspath(source))
    for root, dirs, files in os.walk(source):
      dirs.sort()
      for f in sorted(files):
        path = os.path.join(root, f)
        if f.lower().endswith(suffix) and not _skipped(path):
          with open(path, "rb") as fh:
            yield os.path.relpath(path, parent).replace(os.sep, "/"), fh.read()
    return
  with open(source, "rb") as fh:
    magic = fh.read(4)
  if magic.startswith(b"PK"):
    yield from _iter_zip(source, suffix)
  elif magic.startswith(b"\x1f\x8b"):
    yield from _iter_tar(source, suffix)
  else:
    raise DataError(f"{source} is neither a zip nor a gzip-compressed tar archive "
                    f"(first bytes {magic!r})")


def _iter_zip(path: str, suffix: str):
  member = None
  try:
    with zipfile.ZipFile(path) as zf:
      for info in zf.infolist():
        member = info.filename
        if not info.is_dir() and member.lower().endswith(suffix) and not _skipped(member):
          yield member, zf.read(info)
  except _ARCHIVE_ERRORS as e:
    where = f" (member {member})" if member else ""
    raise DataError(f"corrupt or truncated zip archive {path}{where}: {e}") from e


def _iter_tar(path: str, suffix: str):
  # Stream mode ("r|gz"): one sequential pass, no seeking back in the gzip stream.
  member = None
  try:
    with tarfile.open(path, "r|gz") as tf:
      for info in tf:
        member = info.name
        if info.isfile() and member.lower().endswith(suffix) and not _skipped(member):
          yield member, tf.extractfile(info).read()
  except _ARCHIVE_ERRORS as e:
    where = f" (at or after member {member})" if member else ""
    raise DataError(f"corrupt or truncated tar.gz archive {path}{where}: {e}") from e


def decode_image(data: bytes, where: str) -> Image.Image:
  """The fully decoded PIL image, or a DataError naming `where`."""
  try:
    image = Image.open(io.BytesIO(data))
    image.load()  # Image.open is lazy: a truncated file fails only here.
    return image
  except _IMAGE_ERRORS as e:
    raise DataError(f"cannot decode image {where}: {e}") from e


def png_bytes(array: np.ndarray) -> bytes:
  """Lossless PNG of a uint8 HxW or HxWx3 array (tfds stores bytes as given)."""
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="png")
  return buf.getvalue()
