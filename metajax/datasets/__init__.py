"""Few-shot data sets as tfds builders that prepare and load without TensorFlow.

`load_split("omniglot", "train")` -> uint8 images_CxNxHxWxc (prepared on first
use); `python -m metajax.datasets --dataset omniglot --manual_dir DIR`
prepares once. See docs/DATA.md.
"""

from metajax.datasets.loading import Prepared, class_names, load_split, prepare
from metajax.datasets.sources import DataError

__all__ = ["DataError", "Prepared", "class_names", "load_split", "prepare"]
