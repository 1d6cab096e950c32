"""`prepare` a data set once, then `load_split` it as one uint8 array.

Data is written by tfds as array_record and read with `as_data_source`, so
neither step needs TensorFlow. Decoding a whole split image by image is slow
(mini-ImageNet train: 38,400 JPEGs), so the first `load_split` of a split also
saves the stacked array as `<split>.images.npy` inside the prepared dataset's
folder (written to a temporary name, then renamed; its shape is checked
against the dataset info on every load, and a stale or truncated file is
rebuilt). Deleting the prepared folder deletes the cache with it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import numpy as np
import tensorflow_datasets as tfds

from metajax.datasets.mini_imagenet import MiniImagenet, find_inputs
from metajax.datasets.omniglot import PARTS as OMNIGLOT_PARTS
from metajax.datasets.omniglot import Omniglot, OmniglotConfig
from metajax.datasets.sources import DataError, find_source

BUILDERS = {"omniglot": Omniglot, "mini_imagenet": MiniImagenet}
CONFIGS = {"omniglot": ("maml", "vinyals"), "mini_imagenet": ("default",)}
_READ_BATCH = 2048  # examples per data-source read


@dataclasses.dataclass
class Prepared:
  """What `prepare` did: `splits` maps split -> (classes, images)."""
  name: str
  config: str | None
  path: str
  splits: dict[str, tuple[int, int]]
  seconds: float
  reused: bool


def make_builder(name: str, config=None, data_dir=None) -> tfds.core.DatasetBuilder:
  """The builder of `name` ("omniglot" or "mini_imagenet"); omniglot `config`
  is "maml" (default), "vinyals" or an `OmniglotConfig`."""
  if name not in BUILDERS:
    raise DataError(f"dataset must be one of {sorted(BUILDERS)}, got {name!r}")
  if name == "mini_imagenet":
    if config not in (None, "default"):
      raise DataError(f"mini_imagenet has one config, 'default' (or None); got {config!r}")
    config = None
  elif config is None:
    config = "maml"
  elif not isinstance(config, OmniglotConfig) and config not in CONFIGS[name]:
    raise DataError(f"omniglot config must be one of {CONFIGS[name]}, got {config!r}")
  return BUILDERS[name](config=config, data_dir=data_dir)


def _describe(builder) -> str:
  config = builder.builder_config
  return builder.name + (f"/{config.name}" if config else "")


def _download_and_prepare(builder, manual_dir) -> None:
  # tfds writes into `<dir>.incomplete.<id>` and renames it only on success,
  # deleting it on any error: a failed run leaves nothing that loads. It also
  # makes empty folders and a metadata file first; a failure removes those too.
  root = os.fspath(builder.data_dir_root)
  before = _tree(root) if os.path.isdir(root) else None
  try:
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(
            manual_dir=os.fspath(manual_dir) if manual_dir else None))
  except BaseException as e:
    _remove_scaffolding(root, before, os.path.join(root, builder.name))
    if isinstance(e, DataError) and not manual_dir and _holds_inputs(builder.name, root):
      raise DataError(
          f"{e}\n{root} itself holds {builder.name}'s raw input: pass it as the manual dir "
          f"(--config.manual_dir={root}, or `python -m metajax.datasets --manual_dir`); "
          "data_dir is where the prepared data set is written") from e
    raise


def _tree(root: str) -> set[str]:
  """Every path under `root` (nothing if it does not exist)."""
  paths = set()
  for folder, dirs, files in os.walk(root):
    paths.update(os.path.join(folder, n) for n in dirs + files)
  return paths


def _remove_scaffolding(root: str, before: set[str] | None, own: str) -> None:
  """Removes what a failed preparation added under `root` (`before`: the paths
  there before it, None if `root` did not exist): the data set's new
  `.config/metadata.json` unless some variant of it is prepared (another
  process may have finished one meanwhile), then every new folder left empty,
  deepest first. No other file is removed: tfds deletes its own incomplete
  folder, and downloads or another variant's files must stay."""
  new = sorted(_tree(root) - (before or set()), key=len, reverse=True)
  metadata = os.path.join(own, ".config", "metadata.json")
  try:
    prepared = any("dataset_info.json" in files for _, _, files in os.walk(own))
    if metadata in new and not prepared:
      os.remove(metadata)
    for path in new:
      if os.path.isdir(path) and not os.listdir(path):
        os.rmdir(path)
    if before is None and os.path.isdir(root) and not os.listdir(root):
      os.rmdir(root)
  except OSError as e:  # a read-only folder: the failure's own error matters more
    logging.warning("could not remove what the failed preparation left in %s: %s", root, e)


def _holds_inputs(name: str, folder: str) -> bool:
  """Whether `folder` holds `name`'s raw input (archives or unpacked folders)."""
  if name == "omniglot":
    return any(find_source(folder, part) for part in OMNIGLOT_PARTS)
  try:
    find_inputs(folder)
  except DataError:
    return False
  return True


def prepare(name: str, *, config=None, data_dir=None, manual_dir=None) -> Prepared:
  """Prepares `name` (if not yet prepared) from `manual_dir`, or for Omniglot
  by download when that holds no input and the machine is online."""
  builder = make_builder(name, config, data_dir)
  t0 = time.perf_counter()
  reused = builder.is_prepared()
  if not reused:
    _download_and_prepare(builder, manual_dir)
  classes = builder.info.metadata["class_names"]
  splits = {s: (len(classes[s]), info.num_examples) for s, info in builder.info.splits.items()}
  return Prepared(name, builder.builder_config and builder.builder_config.name,
                  builder.data_dir, splits, time.perf_counter() - t0, reused)


def load_split(name: str, split: str, *, config=None, data_dir=None, manual_dir=None,
               download: bool = True) -> np.ndarray:
  """images_CxNxHxWxc uint8: class c is label c, its N images ordered by file name.

  Omniglot: C x 20 x 28 x 28 x 1, ink 255; mini-ImageNet: C x 600 x 84 x 84 x 3.
  Prepares the data set first if it is not (`download=False`: error instead).
  """
  builder = _prepared_builder(name, split, config, data_dir, manual_dir, download)
  shape = builder.info.features["image"].shape
  num_classes = len(builder.info.metadata["class_names"][split])
  num_examples = builder.info.splits[split].num_examples
  if not num_classes:
    raise DataError(f"the {split} split of {_describe(builder)} has no classes")
  cache = os.path.join(builder.data_dir, f"{split}.images.npy")
  if num_examples % num_classes == 0:
    expected = (num_classes, num_examples // num_classes) + tuple(shape)
    images = _read_cache(cache, expected)
    if images is not None:
      return images
  images = _stack(builder, split, num_classes)
  _write_cache(cache, images)
  return images


def class_names(name: str, split: str, *, config=None, data_dir=None, manual_dir=None,
                download: bool = True) -> list[str]:
  """Name of each label of the split: Omniglot `Alphabet/characterNN/rotDDD`,
  mini-ImageNet the wnid (`load_split`'s class c is `class_names(...)[c]`)."""
  builder = _prepared_builder(name, split, config, data_dir, manual_dir, download)
  return list(builder.info.metadata["class_names"][split])


def _prepared_builder(name, split, config, data_dir, manual_dir, download):
  builder = make_builder(name, config, data_dir)
  if not builder.is_prepared():
    if not download:
      raise DataError(f"{_describe(builder)} is not prepared in {builder.data_dir}; run "
                      f"`python -m metajax.datasets --dataset {name} --manual_dir DIR` "
                      f"or pass download=True")
    _download_and_prepare(builder, manual_dir)
  if split not in builder.info.splits:
    raise DataError(f"{_describe(builder)} has splits {sorted(builder.info.splits)}, "
                    f"got {split!r}")
  return builder


def _stack(builder, split: str, num_classes: int) -> np.ndarray:
  """Decodes every example; sorts by (label, file name); checks equal class sizes."""
  source = builder.as_data_source(split)
  n = len(source)
  images = np.empty((n,) + tuple(builder.info.features["image"].shape), np.uint8)
  labels = np.empty(n, np.int64)
  files = []
  for start in range(0, n, _READ_BATCH):
    batch = source.__getitems__(range(start, min(n, start + _READ_BATCH)))
    for i, ex in enumerate(batch, start):
      images[i], labels[i] = ex["image"], ex["label"]
      files.append(ex["file_name"])
  counts = np.bincount(labels, minlength=num_classes)
  if len(counts) != num_classes or counts.min() != counts.max():
    names = builder.info.metadata["class_names"][split]
    name = lambda c: names[c] if c < len(names) else f"label {c}"
    small, big = int(counts.argmin()), int(counts.argmax())  # the smallest is the suspect
    raise DataError(f"class {name(small)} of {_describe(builder)} {split} has "
                    f"{counts[small]} images but class {name(big)} has {counts[big]}: "
                    f"load_split needs the same number in every class")
  order = np.lexsort((np.array(files), labels))
  return images[order].reshape((num_classes, n // num_classes) + images.shape[1:])


def _read_cache(path: str, expected_shape) -> np.ndarray | None:
  try:
    cached = np.load(path, mmap_mode="r")
  except (OSError, ValueError):  # absent, truncated or not an .npy
    return None
  if cached.shape != expected_shape or cached.dtype != np.uint8:
    return None
  return np.array(cached)


def _write_cache(path: str, images: np.ndarray) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      np.save(f, images)
    os.replace(tmp, path)  # atomic: readers see the old file or the whole new one
  except OSError as e:  # e.g. a read-only shared data_dir: loading still works
    logging.warning("could not cache %s: %s", path, e)
    if os.path.exists(tmp):
      os.remove(tmp)
