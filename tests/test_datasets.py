"""metajax.datasets: the Omniglot and mini-ImageNet tfds builders, without TensorFlow.

Tiny inputs are generated in tmp_path in every accepted layout. The real data
(`../shared/data` from the repository root) is prepared once per module into
a temporary data_dir when present; `pytest --durations=0` shows what each
preparation costs (the fixtures' setup time).
"""

import csv
import io
import os
import shutil
import sys
import tarfile
import zipfile
from importlib import resources

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from metajax.datasets import DataError, class_names, load_split, prepare
from metajax.datasets import __main__ as cli
from metajax.datasets import loading, omniglot
from metajax.datasets.omniglot import OmniglotConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL = os.path.normpath(os.path.join(REPO, "..", "shared", "data"))
ROTS = (0, 90, 180, 270)
SPLITS = ("train", "validation", "test")

# ---------------------------------------------------------------- tiny Omniglot

ALPHABETS = {"images_background": {"Alpha": 2, "Beta": 2}, "images_evaluation": {"Gamma": 2}}
TINY_MAML = OmniglotConfig(name="tiny_maml", num_characters=6, num_train=3, num_validation=1)


def _ink(rng, d):
  """105x105 bool ink mask. Drawing 1: all ink; 2: none; else an off-centre bar
  (asymmetric, so every rotation differs)."""
  ink = np.zeros((105, 105), bool)
  if d == 1:
    ink[:] = True
  elif d > 2:
    r, c = rng.randint(0, 50, size=2)
    ink[r:r + 55, c:c + 20] = True
    ink[r:r + 8, c:c + 50] = True
  return ink


def _png_1bit(ink) -> bytes:
  """Omniglot's format: 1-bit PNG, white (1) background, black (0) ink."""
  buf = io.BytesIO()
  Image.fromarray(~ink).save(buf, format="png")  # a bool array is mode "1"
  return buf.getvalue()


def _expected_28(ink) -> np.ndarray:
  gray = Image.fromarray(~ink).convert("L").resize((28, 28), Image.LANCZOS)
  return 255 - np.asarray(gray)


def _write_archive(path, members: dict, form: str):
  if form == "zip":
    with zipfile.ZipFile(path, "w") as z:
      z.writestr(next(iter(members)).split("/")[0] + "/", b"")  # a directory entry
      for name, data in members.items():
        z.writestr(name, data)
  else:
    with tarfile.open(path, "w:gz") as t:
      for name, data in members.items():
        info = tarfile.TarInfo(name)
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))


def write_omniglot(folder, form="zip", drawings=20, parts=tuple(ALPHABETS), corrupt=None):
  """Tiny Omniglot archives; {char_id: [(file name, ink)]}. `corrupt`: a member
  name whose bytes are replaced by garbage."""
  rng = np.random.RandomState(0)
  os.makedirs(folder, exist_ok=True)
  chars, n = {}, 0
  for part in parts:
    members = {}
    for alphabet, count in ALPHABETS[part].items():
      for c in range(1, count + 1):
        n += 1
        char_id = f"{alphabet}/character{c:02d}"
        chars[char_id] = []
        for d in range(1, drawings + 1):
          ink = _ink(rng, d)
          name = f"{n:04d}_{d:02d}.png"
          member = f"{part}/{char_id}/{name}"
          members[member] = b"not a png" if member == corrupt else _png_1bit(ink)
          chars[char_id].append((name, ink))
    _write_archive(os.path.join(folder, f"{part}.{form}"), members, form)
  return chars


@pytest.mark.parametrize("form", ["zip", "tar.gz"])
def test_omniglot_maml_split_pixels_and_rotations(tmp_path, form):
  chars = write_omniglot(tmp_path / "raw", form)
  kw = dict(config=TINY_MAML, data_dir=tmp_path / "tfds", manual_dir=tmp_path / "raw")
  images = {s: load_split("omniglot", s, **kw) for s in SPLITS}
  names = {s: class_names("omniglot", s, **kw) for s in SPLITS}

  ids = sorted(chars)
  shuffled = [ids[i] for i in np.random.RandomState(1).permutation(len(ids))]
  expected = {"train": shuffled[:3], "validation": shuffled[3:4], "test": shuffled[4:]}
  for s in SPLITS:
    assert names[s] == sorted(f"{c}/rot{r:03d}" for c in expected[s] for r in ROTS)
    x = images[s]
    assert x.shape == (4 * len(expected[s]), 20, 28, 28, 1) and x.dtype == np.uint8
    for label, name in enumerate(names[s]):
      char_id, rot = name.rsplit("/", 1)
      want = [np.rot90(_expected_28(ink), int(rot[3:]) // 90) for _, ink in chars[char_id]]
      np.testing.assert_array_equal(x[label, ..., 0], np.stack(want), err_msg=name)
      if rot != "rot000":  # rotations are counter-clockwise np.rot90 of rot000
        k = int(rot[3:]) // 90
        base = x[names[s].index(f"{char_id}/rot000")]
        np.testing.assert_array_equal(x[label], np.rot90(base, k, axes=(1, 2)))
      if rot == "rot090":  # counter-clockwise, as PIL's ROTATE_90 (an independent check)
        ccw = [np.asarray(Image.fromarray(b[..., 0]).transpose(Image.Transpose.ROTATE_90))
               for b in base]
        np.testing.assert_array_equal(x[label, ..., 0], np.stack(ccw))
    # Pixel convention: drawing 01 is all ink -> 255, drawing 02 blank -> 0.
    assert (x[:, 0] == 255).all() and (x[:, 1] == 0).all()
  all_names = [n for s in SPLITS for n in names[s]]
  assert len(all_names) == len(set(all_names)) == 4 * len(chars)


def test_omniglot_examples_labels_match_class_names(tmp_path):
  write_omniglot(tmp_path / "raw", drawings=3)
  kw = dict(config=TINY_MAML, data_dir=tmp_path / "tfds")
  done = prepare("omniglot", manual_dir=tmp_path / "raw", **kw)
  assert done.splits == {"train": (12, 36), "validation": (4, 12), "test": (8, 24)}
  builder = loading.make_builder("omniglot", TINY_MAML, tmp_path / "tfds")
  for s in SPLITS:
    names = class_names("omniglot", s, **kw)
    examples = list(builder.as_data_source(s))
    labels = sorted({int(ex["label"]) for ex in examples})
    assert labels == list(range(len(names)))  # contiguous 0..C-1
    for ex in examples:
      assert names[int(ex["label"])] == ex["class_name"].decode()
      assert ex["image"].shape == (28, 28, 1) and ex["image"].dtype == np.uint8


def _write_vinyals_files(folder, split_chars):
  os.makedirs(folder)
  lines = {s: [f"{c}/rot{r:03d}" for c in cs for r in ROTS][::-1]  # any order
           for s, cs in split_chars.items()}
  lines["trainval"] = lines["train"] + lines["val"]
  for s, ls in lines.items():
    (folder / f"{s}.txt").write_text("\n".join(ls) + "\n")
  return lines


def test_omniglot_vinyals_splits_follow_the_files(tmp_path):
  write_omniglot(tmp_path / "raw", form="tar.gz", drawings=2)
  lines = _write_vinyals_files(tmp_path / "splits", {
      "train": ["Alpha/character01", "Gamma/character01", "Alpha/character02"],
      "val": ["Beta/character01"], "test": ["Beta/character02", "Gamma/character02"]})
  config = OmniglotConfig(name="tiny_vinyals", protocol="vinyals", num_characters=6,
                          split_dir=str(tmp_path / "splits"))
  kw = dict(config=config, data_dir=tmp_path / "tfds", manual_dir=tmp_path / "raw")
  files = {"train": "train", "validation": "val", "test": "test", "trainval": "trainval"}
  x = {}
  for split, f in files.items():
    assert class_names("omniglot", split, **kw) == sorted(lines[f])
    x[split] = load_split("omniglot", split, **kw)
    assert x[split].shape == (len(lines[f]), 2, 28, 28, 1)
  tv = class_names("omniglot", "trainval", **kw)
  for split in ("train", "validation"):
    for label, name in enumerate(class_names("omniglot", split, **kw)):
      np.testing.assert_array_equal(x[split][label], x["trainval"][tv.index(name)])


def test_a_split_file_line_errors_name_the_file_line_and_class(tmp_path):
  chars = {"Alpha/character01", "Beta/character02"}
  path = tmp_path / "train.txt"
  path.write_text("Alpha/character01/rot000\nBeta/character02/rot090\nAlpha/character01/rot000\n")
  with pytest.raises(DataError, match=r"lists a class more than once: Alpha/character01/rot000$"):
    omniglot.read_split_file(str(path), chars)
  path.write_text("Alpha/character01/rot000\nAlpha/character01/rot045\n")
  with pytest.raises(DataError, match=r"train.txt:2: 'Alpha/character01/rot045' is not "):
    omniglot.read_split_file(str(path), chars)
  path.write_text("Gamma/character01/rot000\n")
  with pytest.raises(DataError, match=r"train.txt:1: character Gamma/character01 is not in"):
    omniglot.read_split_file(str(path), chars)
  path.write_text("Beta/character02/rot270\nAlpha/character01/rot000\n")
  assert omniglot.read_split_file(str(path), chars) == [
      "Alpha/character01/rot000", "Beta/character02/rot270"]


def test_shipped_vinyals_files_are_the_standard_split():
  folder = resources.files("metajax.datasets") / "splits" / "omniglot_vinyals"
  read = lambda f: (folder / f).read_text().split()
  split = {f: read(f"{f}.txt") for f in ("train", "val", "test", "trainval")}
  assert [len(split[f]) for f in ("train", "val", "test", "trainval")] == [4112, 688, 1692, 4800]
  assert split["trainval"] == split["train"] + split["val"]
  chars = {f: {n.rsplit("/", 1)[0] for n in split[f]} for f in ("train", "val", "test")}
  assert [len(c) for c in chars.values()] == [1028, 172, 423]
  assert len(set.union(*chars.values())) == 1623
  assert "MIT License" in (folder / "LICENSE.txt").read_text()


# ----------------------------------------------------------- tiny mini-ImageNet

WNIDS = {"train": ["n0300", "n0100", "n0200"], "validation": ["n0500", "n0400"],
         "test": ["n0700", "n0600"]}
CSV_NAMES = {"train": "train.csv", "validation": "val.csv", "test": "test.csv"}
PER_CLASS = 4
ODD = {"n010000000002.jpg": ("RGB", (100, 90)), "n040000000003.jpg": ("L", (84, 84))}


def _jpeg(rng, mode, size) -> bytes:
  shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
  buf = io.BytesIO()
  Image.fromarray(rng.randint(0, 256, shape).astype(np.uint8), mode).save(
      buf, format="jpeg", quality=90)
  return buf.getvalue()


def _expected_84(data: bytes) -> np.ndarray:
  image = Image.open(io.BytesIO(data)).convert("RGB")
  if image.size != (84, 84):
    image = image.resize((84, 84), Image.LANCZOS)
  return np.asarray(image)


def write_mini(folder, form="folder", extra_rows=None, per_class=None):
  """Tiny mini-ImageNet: CSVs + images/ (form "folder") or <split>.tar.gz.
  Returns {split: {file name: bytes}}."""
  rng = np.random.RandomState(1)
  os.makedirs(folder, exist_ok=True)
  out = {}
  for split, wnids in WNIDS.items():
    files = {}
    for wnid in wnids:
      for i in range((per_class or {}).get(wnid, PER_CLASS)):
        name = f"{wnid}{i:08d}.jpg"  # like the real wnid + 8 digits
        files[name] = _jpeg(rng, *ODD.get(name, ("RGB", (84, 84))))
    rows = [(n, n[:5]) for n in files] + (extra_rows or {}).get(split, [])
    rows = [rows[i] for i in rng.permutation(len(rows))]  # CSV order does not matter
    with open(os.path.join(folder, CSV_NAMES[split]), "w", newline="") as f:
      csv.writer(f).writerows([("filename", "label")] + rows)
    members = {f"images/{n}": d for n, d in files.items()}
    if form == "folder":
      for member, data in members.items():
        os.makedirs(os.path.join(folder, "images"), exist_ok=True)
        with open(os.path.join(folder, member), "wb") as f:
          f.write(data)
    else:
      _write_archive(os.path.join(folder, f"{split.replace('validation', 'val')}.tar.gz"),
                     members, "tar.gz")
    out[split] = files
  return out


@pytest.mark.parametrize("form", ["folder", "tar.gz"])
def test_mini_imagenet_splits_and_pixels(tmp_path, form):
  files = write_mini(tmp_path / "raw", form)
  kw = dict(data_dir=tmp_path / "tfds", manual_dir=tmp_path / "raw")
  for split in SPLITS:
    x = load_split("mini_imagenet", split, **kw)
    names = class_names("mini_imagenet", split, **kw)
    assert names == sorted(WNIDS[split])
    assert x.shape == (len(names), PER_CLASS, 84, 84, 3) and x.dtype == np.uint8
    for label, wnid in enumerate(names):
      in_class = sorted(n for n in files[split] if n.startswith(wnid))  # by file name
      for i, name in enumerate(in_class):
        np.testing.assert_array_equal(x[label, i], _expected_84(files[split][name]),
                                      err_msg=name)


# -------------------------------------------------------------------- bad input

@pytest.fixture
def offline(monkeypatch):
  monkeypatch.setattr(omniglot, "_online", lambda *a, **k: False)


def test_omniglot_missing_input_offline_names_folder_and_files(tmp_path, offline):
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError) as e:
    prepare("omniglot", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "empty")
  msg = str(e.value)
  assert str(tmp_path / "empty") in msg
  assert "images_background" in msg and "images_evaluation" in msg and ".zip" in msg
  with pytest.raises(DataError, match="downloads/manual"):  # the tfds default manual dir
    prepare("omniglot", data_dir=tmp_path / "tfds")


def test_omniglot_downloads_the_official_zips_when_online(tmp_path, monkeypatch):
  """No manual input, online: the builder asks tfds's download manager for the
  two official zips (served here from local files) and prepares from them."""
  chars = write_omniglot(tmp_path / "served", drawings=2)
  asked = []

  def download(self, urls):
    asked.append(dict(urls))
    return {part: tmp_path / "served" / os.path.basename(url) for part, url in urls.items()}

  monkeypatch.setattr(omniglot, "_online", lambda *a, **k: True)
  monkeypatch.setattr(tfds.download.DownloadManager, "download", download)
  x = load_split("omniglot", "test", config=TINY_MAML, data_dir=tmp_path / "tfds",
                 manual_dir=tmp_path / "empty")
  assert asked == [{
      "images_background":
          "https://github.com/brendenlake/omniglot/raw/master/python/images_background.zip",
      "images_evaluation":
          "https://github.com/brendenlake/omniglot/raw/master/python/images_evaluation.zip"}]
  assert len(chars) == 6 and x.shape == (4 * 2, 2, 28, 28, 1)  # 2 test characters
  assert (x[:, 0] == 255).all() and (x[:, 1] == 0).all()  # drawing 01 all ink, 02 blank

  def failing(self, urls):
    raise OSError("connection reset")

  monkeypatch.setattr(tfds.download.DownloadManager, "download", failing)
  with pytest.raises(DataError, match="images_background.zip.*failed: connection reset"):
    prepare("omniglot", config=TINY_MAML, data_dir=tmp_path / "tfds2")
  _assert_nothing_prepared("omniglot", tmp_path / "tfds2", TINY_MAML)


def test_raw_input_given_as_data_dir_says_to_pass_it_as_manual_dir(tmp_path, offline):
  raw = tmp_path / "raw"
  write_omniglot(raw, drawings=1)
  before = sorted(p.relative_to(raw) for p in raw.rglob("*"))
  with pytest.raises(DataError, match=f"{raw} itself holds omniglot's raw input: pass it as "
                     f"the manual dir \\(--config.manual_dir={raw}"):
    prepare("omniglot", config=TINY_MAML, data_dir=raw)
  assert sorted(p.relative_to(raw) for p in raw.rglob("*")) == before  # nothing written there
  with pytest.raises(DataError) as e:  # an empty data_dir: no such hint, nothing left
    prepare("omniglot", config=TINY_MAML, data_dir=tmp_path / "tfds")
  assert "itself holds" not in str(e.value)
  _assert_nothing_prepared("omniglot", tmp_path / "tfds", TINY_MAML)


def test_a_failed_preparation_keeps_what_another_process_prepared_meanwhile(tmp_path, offline,
                                                                           monkeypatch):
  # While this preparation of tiny_maml runs (and then fails), another process
  # prepares the tiny_other variant into the same data_dir: it must survive.
  write_omniglot(tmp_path / "raw", drawings=1)
  other = OmniglotConfig(name="tiny_other", num_characters=6, num_train=2, num_validation=2)
  real = loading.Omniglot.download_and_prepare

  def prepare_other_then_fail(self, *args, **kwargs):
    if self.builder_config.name == "tiny_maml":
      prepare("omniglot", config=other, data_dir=tmp_path / "tfds",
              manual_dir=tmp_path / "raw")
      raise DataError("this preparation failed")
    return real(self, *args, **kwargs)
  monkeypatch.setattr(loading.Omniglot, "download_and_prepare", prepare_other_then_fail)
  with pytest.raises(DataError, match="this preparation failed"):
    prepare("omniglot", config=TINY_MAML, data_dir=tmp_path / "tfds",
            manual_dir=tmp_path / "raw")
  assert loading.make_builder("omniglot", config=other, data_dir=tmp_path / "tfds").is_prepared()
  assert load_split("omniglot", "train", config=other, data_dir=tmp_path / "tfds",
                    download=False).shape[0] == 2 * 4


def test_omniglot_one_archive_missing(tmp_path, offline):
  write_omniglot(tmp_path / "raw", drawings=1, parts=("images_background",))
  with pytest.raises(DataError, match="images_evaluation"):
    prepare("omniglot", config=TINY_MAML, data_dir=tmp_path / "tfds",
            manual_dir=tmp_path / "raw")


def test_mini_imagenet_missing_input_names_folder_and_files(tmp_path):
  (tmp_path / "raw").mkdir()
  with pytest.raises(DataError) as e:
    prepare("mini_imagenet", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "raw")
  msg = str(e.value)
  for expected in (str(tmp_path / "raw"), "train.csv", "val.csv", "test.csv",
                   "train.tar.gz", "images/"):
    assert expected in msg


def _assert_nothing_prepared(name, data_dir, config=None):
  """Nothing left in `data_dir` (which did not exist), so nothing a later run
  would trust: no incomplete folder, no dataset_info, no empty scaffolding."""
  left = [os.path.join(r, f) for r, ds, fs in os.walk(data_dir) for f in fs + ds]
  assert not left and not os.path.exists(data_dir), left
  assert not loading.make_builder(name, config=config, data_dir=data_dir).is_prepared()


@pytest.mark.parametrize("form", ["zip", "tar.gz"])
def test_truncated_omniglot_archive_names_it_and_leaves_nothing(tmp_path, form):
  # images_evaluation is read after images_background's drawings were decoded.
  write_omniglot(tmp_path / "raw", form=form, drawings=3)
  path = tmp_path / "raw" / f"images_evaluation.{form}"
  path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
  with pytest.raises(DataError, match=f"images_evaluation.{form}"):
    prepare("omniglot", config=TINY_MAML, data_dir=tmp_path / "tfds",
            manual_dir=tmp_path / "raw")
  _assert_nothing_prepared("omniglot", tmp_path / "tfds", TINY_MAML)


def test_truncated_mini_imagenet_archive_names_it_and_leaves_nothing(tmp_path):
  write_mini(tmp_path / "raw", "tar.gz")
  path = tmp_path / "raw" / "test.tar.gz"  # the last split: the others were written
  path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
  with pytest.raises(DataError, match="test.tar.gz"):
    load_split("mini_imagenet", "train", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "raw")
  _assert_nothing_prepared("mini_imagenet", tmp_path / "tfds")


def test_not_an_archive(tmp_path):
  write_omniglot(tmp_path / "raw", drawings=1)
  (tmp_path / "raw" / "images_background.zip").write_bytes(b"<html>404</html>")
  with pytest.raises(DataError, match="images_background.zip is neither a zip nor"):
    prepare("omniglot", config=TINY_MAML, data_dir=tmp_path / "tfds",
            manual_dir=tmp_path / "raw")


def test_vinyals_file_naming_an_absent_character(tmp_path):
  write_omniglot(tmp_path / "raw", drawings=1)
  _write_vinyals_files(tmp_path / "splits", {
      "train": ["Alpha/character01"], "val": ["Delta/character07"], "test": ["Beta/character01"]})
  config = OmniglotConfig(name="tiny_vinyals", protocol="vinyals", num_characters=6,
                          split_dir=str(tmp_path / "splits"))
  with pytest.raises(DataError, match=r"val.txt:1: character Delta/character07 is not in"):
    prepare("omniglot", config=config, data_dir=tmp_path / "tfds", manual_dir=tmp_path / "raw")


def test_corrupt_png_names_archive_and_member(tmp_path):
  member = "images_background/Beta/character01/0003_02.png"
  write_omniglot(tmp_path / "raw", drawings=3, corrupt=member)
  with pytest.raises(DataError) as e:
    prepare("omniglot", config=TINY_MAML, data_dir=tmp_path / "tfds",
            manual_dir=tmp_path / "raw")
  assert member in str(e.value) and "images_background.zip" in str(e.value)


def test_corrupt_jpeg_names_the_file(tmp_path):
  files = write_mini(tmp_path / "raw")
  bad = tmp_path / "raw" / "images" / "n060000000001.jpg"
  bad.write_bytes(files["test"]["n060000000001.jpg"][:200])
  with pytest.raises(DataError, match="n060000000001.jpg"):
    prepare("mini_imagenet", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "raw")


@pytest.mark.parametrize("form", ["folder", "tar.gz"])
def test_csv_naming_an_absent_image(tmp_path, form):
  write_mini(tmp_path / "raw", form, extra_rows={"validation": [("n0400000099.jpg", "n0400")]})
  with pytest.raises(DataError, match="n0400000099.jpg"):
    prepare("mini_imagenet", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "raw")


def test_failed_prepare_leaves_nothing_and_a_later_load_prepares_fresh(tmp_path):
  # The missing image is in the last split: train and validation were already
  # written into tfds's incomplete folder when the error came.
  write_mini(tmp_path / "bad", extra_rows={"test": [("n0600000099.jpg", "n0600")]})
  write_mini(tmp_path / "good")
  data = tmp_path / "tfds"
  with pytest.raises(DataError, match="n0600000099.jpg"):
    load_split("mini_imagenet", "train", data_dir=data, manual_dir=tmp_path / "bad")
  _assert_nothing_prepared("mini_imagenet", data)
  with pytest.raises(DataError, match="not prepared"):
    load_split("mini_imagenet", "train", data_dir=data, download=False)
  x = load_split("mini_imagenet", "train", data_dir=data, manual_dir=tmp_path / "good")
  assert x.shape == (3, PER_CLASS, 84, 84, 3)


def test_unequal_class_sizes_name_the_class(tmp_path):
  write_mini(tmp_path / "raw", per_class={"n0500": 3})
  kw = dict(data_dir=tmp_path / "tfds", manual_dir=tmp_path / "raw")
  assert load_split("mini_imagenet", "train", **kw).shape[:2] == (3, PER_CLASS)
  with pytest.raises(DataError, match="n0500"):
    load_split("mini_imagenet", "validation", **kw)


def test_array_cache_is_written_and_rebuilt_when_stale(tmp_path):
  write_mini(tmp_path / "raw")
  kw = dict(data_dir=tmp_path / "tfds", manual_dir=tmp_path / "raw")
  x = load_split("mini_imagenet", "test", **kw)
  cache = tmp_path / "tfds" / "mini_imagenet" / "1.0.0" / "test.images.npy"
  np.testing.assert_array_equal(np.load(cache), x)
  for stale in (cache.read_bytes()[:1000], b"garbage"):  # truncated; not an .npy
    cache.write_bytes(stale)
    np.testing.assert_array_equal(load_split("mini_imagenet", "test", **kw), x)
  np.save(cache, x[:1])  # a valid array of the wrong shape
  np.testing.assert_array_equal(load_split("mini_imagenet", "test", **kw), x)
  assert not [p for p in os.listdir(cache.parent) if ".tmp" in p]


def test_bad_name_config_and_split(tmp_path):
  with pytest.raises(DataError, match=r"\['mini_imagenet', 'omniglot'\], got 'cifar'"):
    load_split("cifar", "train", data_dir=tmp_path)
  with pytest.raises(DataError, match="'maml', 'vinyals'"):
    load_split("omniglot", "train", config="ravi", data_dir=tmp_path)
  write_mini(tmp_path / "raw")
  with pytest.raises(DataError, match=r"\['test', 'train', 'validation'\], got 'val'"):
    load_split("mini_imagenet", "val", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "raw")


def test_cli_prepares_and_reports(tmp_path, capsys):
  write_mini(tmp_path / "raw", "tar.gz")
  args = ["--dataset", "mini_imagenet", "--manual_dir", str(tmp_path / "raw"),
          "--data_dir", str(tmp_path / "tfds")]
  assert cli.main(args) == 0
  out = capsys.readouterr().out
  assert "prepared in" in out and str(tmp_path / "tfds" / "mini_imagenet" / "1.0.0") in out
  assert "train: 3 classes, 12 images" in out and "test.images.npy: 2x4x84x84x3" in out
  assert cli.main(args) == 0 and "already prepared" in capsys.readouterr().out
  assert cli.main(["--dataset", "mini_imagenet", "--manual_dir", str(tmp_path / "none"),
                   "--data_dir", str(tmp_path / "tfds2")]) == 2
  assert "error: mini-ImageNet input not found" in capsys.readouterr().err


_WITHOUT_TENSORFLOW = """
import sys

class Hidden:  # wraps an import finder so that it finds no TensorFlow module
  def __init__(self, finder):
    self.finder = finder
  def __getattr__(self, name):
    return getattr(self.finder, name)
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] == "tensorflow":
      return None
    return self.finder.find_spec(name, path, target)

# As if TensorFlow were not installed, even where it is.
sys.meta_path[:] = [Hidden(f) for f in sys.meta_path]
sys.path.insert(0, sys.argv[1])
from test_datasets import write_mini
from metajax.datasets import load_split
write_mini(sys.argv[2] + "/raw", "tar.gz")
x = load_split("mini_imagenet", "test", data_dir=sys.argv[2] + "/tfds",
               manual_dir=sys.argv[2] + "/raw")
assert x.shape == (2, 4, 84, 84, 3), x.shape
import importlib.util
assert importlib.util.find_spec("tensorflow") is None
assert not [m for m in sys.modules if m.split(".")[0] == "tensorflow"]
print("prepared without tensorflow")
"""


def test_prepares_and_loads_without_tensorflow(tmp_path):
  # A fresh process where importing TensorFlow fails: the builders must
  # prepare (array_record) and load without it, installed or not.
  import subprocess
  out = subprocess.run([sys.executable, "-c", _WITHOUT_TENSORFLOW, os.path.dirname(__file__),
                        str(tmp_path)], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "prepared without tensorflow" in out.stdout


# -------------------------------------------------------------------- real data

def _real(folder, first_file):
  """The real-data folder, or skip with where it was looked for."""
  path = os.path.join(REAL, folder)
  if not os.path.isfile(os.path.join(path, first_file)):
    pytest.skip(f"real data not found: no {first_file} in {path} "
                f"(../shared/data from the repository root)")
  return path


@pytest.fixture(scope="module")
def real_data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("tfds_real")
  yield path
  shutil.rmtree(path, ignore_errors=True)  # ~1 GB; pytest would keep it for 3 runs


# One preparation per config and module; its cost is the fixture's setup time.
@pytest.fixture(scope="module")
def real_omniglot_maml(real_data_dir):
  return prepare("omniglot", config="maml", data_dir=real_data_dir,
                 manual_dir=_real("omniglot", "images_background.tar.gz"))


@pytest.fixture(scope="module")
def real_omniglot_vinyals(real_data_dir):
  return prepare("omniglot", config="vinyals", data_dir=real_data_dir,
                 manual_dir=_real("omniglot", "images_background.tar.gz"))


@pytest.fixture(scope="module")
def real_mini_imagenet(real_data_dir):
  return prepare("mini_imagenet", data_dir=real_data_dir,
                 manual_dir=_real("miniimagenet", "train.tar.gz"))


def test_real_omniglot_maml(real_omniglot_maml, real_data_dir):
  kw = dict(config="maml", data_dir=real_data_dir, download=False)
  chars = {}
  for split, classes in (("train", 4400), ("validation", 400), ("test", 1692)):
    x = load_split("omniglot", split, **kw)
    assert x.shape == (classes, 20, 28, 28, 1) and x.dtype == np.uint8
    names = class_names("omniglot", split, **kw)
    chars[split] = [n.rsplit("/", 1)[0] for n in names]
    assert all(chars[split].count(c) == 4 for c in chars[split][:50])
    # Ink is the minority and is 255; class 1 is class 0 rotated by 90 degrees.
    assert np.median(x[:50]) == 0 and 0.03 < x[:50].mean() / 255 < 0.3
    assert names[1] == names[0][:-3] + "090"
    np.testing.assert_array_equal(x[1], np.rot90(x[0], 1, axes=(1, 2)))
  every = [c for split in chars for c in set(chars[split])]
  assert len(every) == len(set(every)) == 1623  # each character in exactly one split


def test_real_omniglot_vinyals(real_omniglot_vinyals, real_data_dir):
  kw = dict(config="vinyals", data_dir=real_data_dir, download=False)
  assert real_omniglot_vinyals.splits == {
      "train": (4112, 82240), "validation": (688, 13760), "test": (1692, 33840),
      "trainval": (4800, 96000)}
  folder = os.path.join(REAL, "omniglot", "splits")
  for split, f in (("train", "train"), ("validation", "val"), ("test", "test"),
                   ("trainval", "trainval")):
    with open(os.path.join(folder, f"{f}.txt")) as fh:
      assert class_names("omniglot", split, **kw) == sorted(fh.read().split())
  assert load_split("omniglot", "validation", **kw).shape == (688, 20, 28, 28, 1)


def test_real_mini_imagenet(real_mini_imagenet, real_data_dir):
  kw = dict(data_dir=real_data_dir, download=False)
  assert real_mini_imagenet.splits == {
      "train": (64, 38400), "validation": (16, 9600), "test": (20, 12000)}
  # Decoding all 38,400 train JPEGs takes ~13 s here: count its labels without
  # decoding images, and load (decode) only the two smaller splits.
  builder = loading.make_builder("mini_imagenet", data_dir=real_data_dir)
  train = builder.as_data_source("train", decoders={"image": tfds.decode.SkipDecoding()})
  labels = [ex["label"] for ex in train.__getitems__(range(len(train)))]
  assert (np.bincount(labels) == 600).all() and len(np.bincount(labels)) == 64
  for split, classes in (("validation", 16), ("test", 20)):
    x = load_split("mini_imagenet", split, **kw)
    assert x.shape == (classes, 600, 84, 84, 3) and x.dtype == np.uint8
  with open(os.path.join(REAL, "miniimagenet", "test.csv")) as f:
    rows = list(csv.reader(f))[1:]
  wnids = sorted({w for _, w in rows})
  assert class_names("mini_imagenet", "test", **kw) == wnids
  first = sorted(n for n, w in rows if w == wnids[0])[0]
  with tarfile.open(os.path.join(REAL, "miniimagenet", "test.tar.gz")) as t:
    source = np.asarray(Image.open(t.extractfile(f"images/{first}")))
  np.testing.assert_array_equal(x[0, 0], source)  # x is the test split


@pytest.mark.xla_optimized
def test_short_real_omniglot_training_rises_above_chance(real_omniglot_maml, real_data_dir,
                                                         tmp_path):
  """150 first-order MAML steps on the real MAML split: the 5-way test accuracy
  (chance 20%) clearly rises, and only after adaptation."""
  from metajax.config import fewshot_base
  from metajax.train import train_and_evaluate
  config = fewshot_base("omniglot")
  config.update(dict(algorithm="fomaml", data_dir=str(real_data_dir), filters=32,
                     meta_batch=8, num_steps=150, steps_per_call=50, log_every=50,
                     outer_lr=3e-3, eval_every=0, eval_tasks=100, eval_batch=25,
                     eval_max_steps=3, plots=False))
  r = train_and_evaluate(config, str(tmp_path), progress=False)
  assert abs(r["accuracy"][0] - 0.2) < 0.06, r["accuracy"]
  assert r["final_accuracy"] - r["final_ci95"] > 0.5, r["accuracy"]
