"""Omniglot (Lake et al. 2015) as a tfds builder: 28x28x1 uint8, ink = 255.

Input (tfds manual dir): `images_background` and `images_evaluation`, each as
the official `.zip`, a `.tar.gz` of the same tree, or the unpacked folder.
Without them, and online, the official zips are downloaded.

Every image is 8-bit grayscale (the 1-bit PNG's mode "1" converted to "L":
white background 255, black ink 0), resized to 28x28 with `Image.LANCZOS` and
inverted, so ink = 255 and background = 0 (after /255, ink = 1); it is stored
as a raw uint8 tensor, not a PNG. Each character gives 4 classes, its drawings
rotated by 0/90/180/270 degrees counter-clockwise (`np.rot90` of the 28x28
image), in every split: MAML's reference code rotates the characters of
evaluation tasks too (it draws one rotation per character and task; here the
rotations are separate classes, as in the Vinyals split files).

Configs (the character splits):
  maml:    sort the 1623 `Alphabet/characterNN` ids, permute them with
           `np.random.RandomState(1).permutation(1623)`; the first 1100 are
           `train`, the next 100 `validation`, the other 423 `test`
           (4400 / 400 / 1692 classes). The sizes are MAML's; its own
           shuffle (Python `random.seed(1)` over `os.listdir` order) depends
           on the file system, so it is not reproduced character for character.
  vinyals: the split files of Vinyals et al. as used by ProtoNets
           (`splits/omniglot_vinyals/*.txt`): `train` / `validation` / `test`
           / `trainval` with 1028 / 172 / 423 / 1200 characters
           (4112 / 688 / 1692 / 4800 classes).
`label` is the index of `class_name` (`Alphabet/characterNN/rotDDD`) in the
sorted list of the split's class names: contiguous 0..C-1 within each split.

`skip_registration=True`: tfds has its own built-in `omniglot`; this builder
is instantiated directly (see `metajax.datasets.loading`), never by name.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
import socket
import threading
from importlib import resources

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from metajax.datasets.sources import DataError, decode_image, find_source, iter_files

PARTS = ("images_background", "images_evaluation")
URLS = {p: f"https://github.com/brendenlake/omniglot/raw/master/python/{p}.zip" for p in PARTS}
ROTATIONS = (0, 90, 180, 270)
SIZE = 28
VINYALS_FILES = {"train": "train.txt", "validation": "val.txt", "test": "test.txt",
                 "trainval": "trainval.txt"}

_INPUT_HELP = (
    "expected images_background and images_evaluation, each as .zip (the official "
    "https://github.com/brendenlake/omniglot/tree/master/python zips), .tar.gz of the "
    "same tree, or an unpacked folder")


@dataclasses.dataclass(eq=False)
class OmniglotConfig(tfds.core.BuilderConfig):
  """A character split. `maml`: `seed`, `num_train`, `num_validation` (test =
  the rest); `vinyals`: the files in `split_dir` (None = the shipped copies).
  `num_characters`: how many characters the input must hold."""
  protocol: str = "maml"  # "maml" or "vinyals"
  num_characters: int = 1623
  seed: int = 1
  num_train: int = 1100
  num_validation: int = 100
  split_dir: str | None = None


def to_28x28(image: Image.Image) -> np.ndarray:
  """Any-mode PIL image -> uint8 28x28, ink 255, background 0."""
  gray = image.convert("L")  # mode "1" decodes as 0/1 bits; "L" makes it 0/255
  small = gray.resize((SIZE, SIZE), Image.LANCZOS)
  return 255 - np.asarray(small, np.uint8)


def load_characters(sources: dict) -> dict[str, list[tuple[str, np.ndarray]]]:
  """{"Alphabet/characterNN": [(png file name, 28x28 uint8)] sorted by file name}."""
  chars: dict[str, dict[str, np.ndarray]] = {}
  for part, source in sources.items():
    for name, data in iter_files(source, ".png"):
      parts = name.split("/")
      if len(parts) < 3:
        raise DataError(f"{source}: member {name} is not <Alphabet>/<characterNN>/<file>.png")
      char_id, file_name = "/".join(parts[-3:-1]), parts[-1]
      drawings = chars.setdefault(char_id, {})
      if file_name in drawings:
        raise DataError(f"{source}: {char_id}/{file_name} appears twice ({part})")
      drawings[file_name] = to_28x28(decode_image(data, f"{name} in {source}"))
  return {c: sorted(d.items()) for c, d in chars.items()}


@functools.lru_cache(maxsize=1)
def _cached_characters(key):
  return load_characters({part: path for part, path, _, _ in key})


def characters(sources: dict) -> dict[str, list[tuple[str, np.ndarray]]]:
  """`load_characters`, reused while the same archives (path, size, mtime) are
  prepared again in this process (e.g. the maml and then the vinyals config)."""
  if not all(os.path.isfile(p) for p in sources.values()):
    return load_characters(sources)
  stats = {p: os.stat(p) for p in sources.values()}
  return _cached_characters(tuple(sorted(
      (part, p, stats[p].st_size, stats[p].st_mtime_ns) for part, p in sources.items())))


def class_names(char_ids) -> list[str]:
  """Sorted `Alphabet/characterNN/rotDDD` for every character and rotation."""
  return sorted(f"{c}/rot{r:03d}" for c in char_ids for r in ROTATIONS)


def maml_split(char_ids, config: OmniglotConfig) -> dict[str, list[str]]:
  chars = sorted(char_ids)
  order = np.random.RandomState(config.seed).permutation(len(chars))
  shuffled = [chars[i] for i in order]
  n_train, n_val = config.num_train, config.num_validation
  if n_train + n_val >= len(chars):
    raise DataError(f"the maml split needs more than num_train + num_validation = "
                    f"{n_train + n_val} characters, the input has {len(chars)}")
  return {"train": class_names(shuffled[:n_train]),
          "validation": class_names(shuffled[n_train:n_train + n_val]),
          "test": class_names(shuffled[n_train + n_val:])}


def read_split_file(path, char_ids) -> list[str]:
  """Sorted class names of one Vinyals split file, each checked against the input."""
  if not os.path.isfile(path):
    raise DataError(f"Vinyals split file {path} not found (expected "
                    f"{', '.join(VINYALS_FILES.values())} in that folder)")
  with open(path) as f:
    lines = [(i, line.strip()) for i, line in enumerate(f, 1) if line.strip()]
  names = []
  for lineno, name in lines:
    parts = name.split("/")
    if len(parts) != 3 or parts[2] not in {f"rot{r:03d}" for r in ROTATIONS}:
      raise DataError(f"{path}:{lineno}: {name!r} is not Alphabet/characterNN/rotDDD "
                      f"with DDD in 000/090/180/270")
    if "/".join(parts[:2]) not in char_ids:
      raise DataError(f"{path}:{lineno}: character {'/'.join(parts[:2])} is not in the input")
    names.append(name)
  repeated = sorted(n for n, count in collections.Counter(names).items() if count > 1)
  if repeated:
    raise DataError(f"{path} lists a class more than once: {', '.join(repeated[:5])}"
                    + (f" and {len(repeated) - 5} more" if len(repeated) > 5 else ""))
  return sorted(names)


def vinyals_split(char_ids, config: OmniglotConfig) -> dict[str, list[str]]:
  if config.split_dir:
    folder = config.split_dir
  else:
    folder = str(resources.files("metajax.datasets") / "splits" / "omniglot_vinyals")
  return {split: read_split_file(os.path.join(folder, f), set(char_ids))
          for split, f in VINYALS_FILES.items()}


def _online(host: str = "github.com", timeout: float = 3.0) -> bool:
  """Whether `host`:443 answers within `timeout` s (DNS included: a thread, as
  getaddrinfo has no timeout of its own)."""
  result = []
  def probe():
    try:
      socket.create_connection((host, 443), timeout=timeout).close()
      result.append(True)
    except OSError:
      pass
  t = threading.Thread(target=probe, daemon=True)
  t.start()
  t.join(timeout + 1.0)
  return bool(result)


class Omniglot(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Omniglot 28x28x1, characters x 4 rotations as classes (module docstring)."""

  name = "omniglot"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "28x28 ink = 255; maml and vinyals character splits."}
  BUILDER_CONFIGS = [
      OmniglotConfig(name="maml", protocol="maml",
                     description="MAML split: 1100 / 100 / 423 characters x 4 rotations."),
      OmniglotConfig(name="vinyals", protocol="vinyals",
                     description="Vinyals et al. split: 1028 / 172 / 423 characters x 4 "
                                 "rotations, plus trainval."),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "maml"
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Put images_background and images_evaluation in the manual dir ({_INPUT_HELP}).
  Without them, and online, the official zips are downloaded.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Omniglot handwritten characters, 28x28, ink = 255; each character "
                    "in 4 rotations as 4 classes.",
        features=tfds.features.FeaturesDict({
            # Raw uint8 bytes, not PNG: PIL's PNG encode and decode of 130k
            # tiny images took most of the time to prepare and to load.
            "image": tfds.features.Tensor(shape=(SIZE, SIZE, 1), dtype=np.uint8,
                                          encoding=tfds.features.Encoding.BYTES),
            "label": tfds.features.Scalar(np.int64, doc="index of class_name in the "
                                                        "split's sorted class names"),
            "class_name": tfds.features.Text(doc="Alphabet/characterNN/rotDDD"),
            "file_name": tfds.features.Text(doc="the source PNG's name, e.g. 0709_01.png"),
        }),
        supervised_keys=("image", "label"),
        homepage="https://github.com/brendenlake/omniglot",
        citation="Lake, Salakhutdinov & Tenenbaum (2015), Human-level concept learning "
                 "through probabilistic program induction. Science 350(6266).",
        metadata=tfds.core.MetadataDict(),
    )

  def _sources(self, dl_manager) -> dict[str, str]:
    manual = getattr(dl_manager, "_manual_dir", None)  # tfds keeps it private
    found = {}
    if manual and os.path.isdir(manual):
      found = {p: find_source(manual, p) for p in PARTS}
      if all(found.values()):
        return found
      if any(found.values()):
        missing = [p for p, s in found.items() if s is None]
        raise DataError(f"{manual} holds {[s for s in found.values() if s]} but not "
                        f"{missing}: {_INPUT_HELP}")
    if not _online():
      raise DataError(f"no Omniglot input in {manual} and no network to download it; "
                      f"put it there or pass another manual dir: {_INPUT_HELP}")
    try:
      paths = dl_manager.download(URLS)
    except Exception as e:  # any download failure: name what was fetched
      raise DataError(f"downloading {list(URLS.values())} failed: {e}") from e
    return {p: os.fspath(paths[p]) for p in PARTS}

  def _split_generators(self, dl_manager):
    config = self.builder_config
    chars = characters(self._sources(dl_manager))
    if len(chars) != config.num_characters:
      raise DataError(f"the Omniglot input holds {len(chars)} characters, config "
                      f"{config.name!r} expects {config.num_characters}")
    if config.protocol == "maml":
      splits = maml_split(chars, config)
    elif config.protocol == "vinyals":
      splits = vinyals_split(chars, config)
    else:
      raise DataError(f"protocol must be 'maml' or 'vinyals', got {config.protocol!r}")
    self.info.metadata["class_names"] = splits  # label c = class_names[split][c]
    return {s: self._generate_examples(c, chars) for s, c in splits.items()}

  def _generate_examples(self, classes, chars):
    for label, name in enumerate(classes):
      char_id, rot = name.rsplit("/", 1)
      k = int(rot[3:]) // 90
      for file_name, image in chars[char_id]:
        yield f"{name}/{file_name}", {
            "image": np.ascontiguousarray(np.rot90(image, k))[..., None],
            "label": label, "class_name": name, "file_name": file_name}
