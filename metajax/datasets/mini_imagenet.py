"""mini-ImageNet (Vinyals et al. 2016) with the Ravi & Larochelle split, as a tfds builder.

Input (tfds manual dir; there is no official download): `train.csv`,
`val.csv`, `test.csv` (`filename,label` header, label = wnid) and the images,
either in one `images/` folder (or `images.zip` / `images.tar.gz`) or as
`train.tar.gz`, `val.tar.gz`, `test.tar.gz` each holding `images/`.

Splits `train` / `validation` / `test` (64 / 16 / 20 classes x 600 images in
the standard CSVs). `image` is 84x84x3 uint8 RGB: an image that is already
84x84 RGB is stored as its source bytes (decoding gives the source pixels);
any other is converted to RGB, resized to 84x84 with `Image.LANCZOS` and
stored as lossless PNG. `label` is the index of the wnid in the sorted wnids
of the split; `class_name` is the wnid.
"""

from __future__ import annotations

import csv
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from metajax.datasets.sources import DataError, decode_image, find_source, iter_files, png_bytes

SIZE = 84
CSVS = {"train": "train.csv", "validation": "val.csv", "test": "test.csv"}
ARCHIVES = {"train": "train", "validation": "val", "test": "test"}  # + .tar.gz / .zip

MANUAL_DOWNLOAD_INSTRUCTIONS = """
mini-ImageNet has no official download. Put into the manual dir
(`--manual_dir DIR`, or <data_dir>/downloads/manual):
  train.csv, val.csv, test.csv   `filename,label` lines, the Ravi & Larochelle split
                                 (github.com/twitter-research/meta-learning-lstm,
                                 data/miniImagenet/)
and the 84x84 images, either
  images/<filename>.jpg          (one folder, or images.zip / images.tar.gz of it)
or
  train.tar.gz, val.tar.gz, test.tar.gz   each holding images/<filename>.jpg
ImageNet images are for non-commercial research and education only.
"""


def read_csv(path: str) -> list[tuple[str, str]]:
  """[(filename, wnid)] of a `filename,label` CSV, checked line by line."""
  with open(path, newline="") as f:
    rows = list(csv.reader(f))
  if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
    raise DataError(f"{path}: the first line must be 'filename,label', got "
                    f"{','.join(rows[0]) if rows else 'an empty file'!r}")
  out, seen = [], set()
  for lineno, row in enumerate(rows[1:], 2):
    if not row:
      continue
    if len(row) != 2 or not row[0].strip() or not row[1].strip():
      raise DataError(f"{path}:{lineno}: expected 'filename,label', got {','.join(row)!r}")
    name, wnid = row[0].strip(), row[1].strip()
    if name in seen:
      raise DataError(f"{path}:{lineno}: {name} is listed twice")
    seen.add(name)
    out.append((name, wnid))
  return out


def encode(data: bytes, where: str) -> bytes:
  """Bytes to store: the source if it decodes as 84x84 RGB, else a resized PNG."""
  image = decode_image(data, where)
  if image.mode == "RGB" and image.size == (SIZE, SIZE):
    return data
  rgb = image.convert("RGB")
  if rgb.size != (SIZE, SIZE):
    rgb = rgb.resize((SIZE, SIZE), Image.LANCZOS)
  return png_bytes(np.asarray(rgb))


def find_inputs(folder) -> tuple[dict[str, str], dict[str, str]]:
  """({split: csv path}, {split: image source}), or a DataError listing what is missing."""
  folder = os.fspath(folder) if folder else None
  ok = folder is not None and os.path.isdir(folder)
  csvs = {s: os.path.join(folder, f) for s, f in CSVS.items()} if ok else {}
  missing = [os.path.basename(p) for p in csvs.values() if not os.path.isfile(p)]
  images = find_source(folder, "images") if ok else None
  if images:
    sources = dict.fromkeys(CSVS, images)
  else:
    sources = {s: find_source(folder, a) if ok else None for s, a in ARCHIVES.items()}
    missing += [f"{a}.tar.gz" for s, a in ARCHIVES.items() if not sources[s]]
  if not ok or missing:
    raise DataError(
        f"mini-ImageNet input not found in {folder}"
        + (f" (missing: {', '.join(missing)})" if ok else " (no such folder)") + ": expected "
        "train.csv, val.csv, test.csv and either images/ (or images.zip / images.tar.gz) "
        "or train.tar.gz, val.tar.gz, test.tar.gz each holding images/."
        + MANUAL_DOWNLOAD_INSTRUCTIONS)
  return csvs, sources


class MiniImagenet(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """mini-ImageNet 84x84x3, Ravi & Larochelle split (module docstring)."""

  name = "mini_imagenet"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Ravi & Larochelle split, 84x84x3."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="mini-ImageNet: 100 ImageNet classes x 600 images at 84x84, "
                    "split 64 / 16 / 20 as Ravi & Larochelle (2017).",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(SIZE, SIZE, 3), encoding_format="jpeg"),
            "label": tfds.features.Scalar(np.int64, doc="index of the wnid in the "
                                                        "split's sorted wnids"),
            "class_name": tfds.features.Text(doc="ImageNet wnid, e.g. n01532829"),
            "file_name": tfds.features.Text(doc="file name from the split's CSV"),
        }),
        supervised_keys=("image", "label"),
        homepage="https://github.com/twitter-research/meta-learning-lstm",
        citation="Vinyals et al. (2016), Matching networks for one shot learning. "
                 "Ravi & Larochelle (2017), Optimization as a model for few-shot learning.",
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    csvs, sources = find_inputs(getattr(dl_manager, "_manual_dir", None))
    rows = {s: read_csv(p) for s, p in csvs.items()}
    owner = {}
    for split, split_rows in rows.items():
      for _, wnid in split_rows:
        if owner.setdefault(wnid, split) != split:
          raise DataError(f"class {wnid} is in both {CSVS[owner[wnid]]} and {CSVS[split]}")
    # label c = class_names[split][c]
    self.info.metadata["class_names"] = {
        s: sorted({w for _, w in r}) for s, r in rows.items()}
    return {s: self._generate_examples(s, csvs[s], rows[s], sources[s]) for s in CSVS}

  def _generate_examples(self, split, csv_path, rows, source):
    wanted = dict(rows)
    labels = {w: i for i, w in enumerate(self.info.metadata["class_names"][split])}
    seen = set()
    for name, data in iter_files(source, ""):
      base = name.rsplit("/", 1)[-1]
      if base in wanted and base not in seen:
        seen.add(base)
        wnid = wanted[base]
        yield base, {"image": encode(data, f"{name} in {source}"), "label": labels[wnid],
                     "class_name": wnid, "file_name": base}
    missing = sorted(set(wanted) - seen)
    if missing:
      raise DataError(f"{csv_path} names {len(missing)} image(s) absent from {source}: "
                      f"{', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
