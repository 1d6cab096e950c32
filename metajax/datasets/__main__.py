"""One-time preparation: python -m metajax.datasets --dataset omniglot --manual_dir DIR.

Prepares the tfds data (array_record) and, unless --no_cache, the stacked
`<split>.images.npy` arrays that `load_split` reads; prints what, where and
how long. Exit status 2 on bad input (the message names the file).
"""

from __future__ import annotations

import argparse
import sys
import time

from metajax.datasets.loading import BUILDERS, CONFIGS, load_split, prepare
from metajax.datasets.sources import DataError


def parse_args(argv):
  p = argparse.ArgumentParser(prog="python -m metajax.datasets", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dataset", required=True, choices=sorted(BUILDERS))
  p.add_argument("--config", default=None,
                 help="omniglot: maml (default), vinyals or all; mini_imagenet: default")
  p.add_argument("--manual_dir", default=None,
                 help="folder with the raw archives (default <data_dir>/downloads/manual)")
  p.add_argument("--data_dir", default=None,
                 help="where prepared data goes (default $TFDS_DATA_DIR or ~/tensorflow_datasets)")
  p.add_argument("--no_cache", action="store_true",
                 help="skip writing the <split>.images.npy arrays")
  return p.parse_args(argv)


def run(args) -> None:
  configs = CONFIGS[args.dataset] if args.config == "all" else (args.config,)
  for config in configs:
    done = prepare(args.dataset, config=config, data_dir=args.data_dir,
                   manual_dir=args.manual_dir)
    label = done.name + (f"/{done.config}" if done.config else "")
    verb = "already prepared" if done.reused else f"prepared in {done.seconds:.1f} s"
    print(f"{label}: {verb} -> {done.path}")
    for split, (classes, images) in done.splits.items():
      print(f"  {split}: {classes} classes, {images} images")
    if not args.no_cache:
      t0 = time.perf_counter()
      for split in done.splits:
        shape = load_split(args.dataset, split, config=config, data_dir=args.data_dir).shape
        print(f"  {split}.images.npy: {'x'.join(map(str, shape))} uint8")
      print(f"  arrays cached in {time.perf_counter() - t0:.1f} s")


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    run(args)
  except DataError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
