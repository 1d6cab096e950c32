"""Every few-shot experiment file: loads, validates, names its cell, and quotes
the published number of that cell (metajax.papers)."""

import ast
import glob
import os
import re

import pytest

from metajax import papers
from metajax.train import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = sorted(glob.glob(os.path.join(ROOT, "experiments", "omniglot_*.py")) +
               glob.glob(os.path.join(ROOT, "experiments", "mini_*.py")))


def test_one_file_per_table_cell():
  names = {os.path.basename(f) for f in FILES}
  for algo in ("maml", "fomaml", "reptile", "metasgd", "anil", "protonet"):
    for dataset, ways, shots in papers.CELLS:
      short = "omniglot" if dataset == "omniglot" else "mini"
      assert f"{short}_{ways}w{shots}s_{algo}.py" in names


@pytest.mark.parametrize("path", FILES, ids=os.path.basename)
def test_experiment_file(path):
  config = load_config(path)
  short, cell, algo = os.path.basename(path)[:-3].split("_")
  ways, shots = map(int, re.fullmatch(r"(\d+)w(\d+)s", cell).groups())
  assert (config.algorithm, config.ways, config.k_shot) == (algo, ways, shots)
  assert config.task == ("omniglot" if short == "omniglot" else "mini_imagenet")
  text = open(path).read()
  assert f"python -m metajax.train --config experiments/{os.path.basename(path)}" in text
  published = papers.PUBLISHED[(algo, config.task, ways, shots)]
  paper_line = re.search(r"^Paper: (.*)$", text, re.M).group(1)
  assert paper_line.startswith(papers.format_published(published) + (
      "" if published is None else " %"))
  assert re.search(r"^Ours: ", text, re.M)


@pytest.mark.parametrize("path", FILES, ids=os.path.basename)
def test_listed_settings_are_the_ones_set(path):
  """The comment "The published settings it sets" lists key=value pairs a
  researcher reads instead of metajax.papers: each must be the config's value."""
  text = open(path).read()
  listing = re.search(r"# The published settings it sets.*?\n((?:\s*#.*\n)+)", text).group(1)
  pairs = re.findall(r"(\w+)=('[^']*'|\([^)]*\)|[^,\s]+)", listing)
  assert pairs, listing
  config = load_config(path)
  for key, value in pairs:
    assert config[key] == ast.literal_eval(value), (key, value, config[key])


def test_a_cell_without_published_settings_names_the_algorithms_cells():
  from metajax.config import ConfigError
  with pytest.raises(ConfigError, match=r"mamlpp on omniglot 5-way 5-shot; mamlpp's cells: "
                                        r"\[\('mini_imagenet', 5, 1\)"):
    papers.paper_config("mamlpp", "omniglot", 5, 5)
  with pytest.raises(ConfigError, match=r"algorithm 'mamll'; algorithms: \['anil'"):
    papers.paper_config("mamll", "omniglot", 5, 1)
