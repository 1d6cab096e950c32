"""Tests a trained run again under another test-time protocol, without training.

  python -m metajax.retest --workdir runs/omniglot_5w5s_anil \
      --config.eval_max_steps=10 --config.eval_inner_lr=0.1 [--step 4000] [--name lr0.1] \
      [--split validation]

Reads WORKDIR/config.json and one checkpoint (the one the run's own test in
eval.json used: the best-validated one, or the final parameters where the last
leg did not validate, as for every sinusoid run; or --step), applies the
overrides, which may only be test-time keys
(TEST_KEYS: how many steps and at what rate a task adapts at test, which and
how many test episodes, where the data is; and k_shot where the run trained on
k_shot_train shots, as Reptile's protocol tests one run at 1 and at 5 shots,
and ways where it trained on ways_train classes, as ProtoNet's Omniglot
protocol tests one 60-way run at 5 and at 20 ways: the best-validated
checkpoint is then the one ranked at the run's own k_shot and ways, so name
another with --step where that matters), scores the test split and writes
WORKDIR/eval_<name>.json beside the run's own eval.json, which it never
touches; the checkpoints are only read. <name> defaults to the overrides, e.g.
eval_eval_inner_lr=0.1,eval_max_steps=10.json. `--split validation` scores
the validation split instead, so that a test-time protocol can be chosen there
and not on the test episodes it is then reported on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax

from metajax import config as config_lib
from metajax import loop, sharding
# TEST_KEYS, the keys a re-test may change, decide only how the final test
# adapts and which episodes it scores, not what was trained or how checkpoints
# were ranked.
from metajax.checkpoint import TEST_KEYS, Checkpoints, check_resumable

# Episode keys that training does not read where the run set their training
# counterpart (key -> (that counterpart, what it counts)): Reptile's protocol
# tests one run trained on 10 shots at 1 and at 5; ProtoNet's Omniglot protocol
# one 60-way run at 5 and at 20 ways.
TRAINED_INSTEAD = {"k_shot": ("k_shot_train", "shots"), "ways": ("ways_train", "classes")}


def retest_keys(saved: dict) -> tuple:
  """TEST_KEYS, plus each TRAINED_INSTEAD key whose counterpart the run set."""
  return TEST_KEYS + tuple(key for key, (counterpart, _) in TRAINED_INSTEAD.items()
                           if saved.get(counterpart))


def config_from_json(saved: dict):
  """The ConfigDict a run saved as JSON (tuples come back from JSON lists)."""
  saved = config_lib.upgrade_saved(saved)
  config = config_lib.base_for(saved)
  for key, value in saved.items():
    if key not in config:
      raise config_lib.unknown_key_error(key, config.keys())
    if isinstance(config[key], tuple) and isinstance(value, list):
      value = tuple(value)
    with config.ignore_type():
      config[key] = value
  return config_lib.validate(config, testing=True)


def _prepare(config, split: str):
  """(template, score): the initial state a checkpoint of this config restores
  into, and score(state) -> the result of that state's parameters on `split`."""
  if config.task != "sinusoid":
    from metajax import fewshot
    from metajax.tasks.episodes import check_episode_shape
    images = fewshot.load_images(config, split)
    check_episode_shape(images.shape, ways=config.ways, shots=config.k_shot,
                        queries=config.eval_query, split=f"{split} split")
    train_images = (fewshot.load_images(config, "train")
                    if config.input_norm == "standardize" else None)
    s = fewshot.setup(config, images.shape[2:], train_images, training=False)
    return s.state, lambda state: dict(fewshot.run_test(config, s, state, images),
                                       split=split)
  from metajax.evaluate import evaluate
  from metajax.train import sinusoid_setup
  algo, problem, _, _, template = sinusoid_setup(config, training=False)
  return template, lambda state: dict(
      evaluate(config, algo, problem, state.adaptation_params()),
      algorithm=config.algorithm)


SPLITS = ("test", "validation")


def _tested_step(workdir: str, steps: list[int]):
  """(step, "best validation" | "newest") of the checkpoint the run's own
  eval.json was computed from; (None, None) where there is no eval.json, or it
  is older than the checkpoints (a later leg saved past the step its test ran
  at, or a new run started in the workdir), or its checkpoint is gone."""
  try:
    with open(os.path.join(workdir, "eval.json")) as f:
      tested = json.load(f)
  except (OSError, ValueError):
    return None, None
  if not isinstance(tested, dict):
    return None, None
  last = tested.get("iterations", tested.get("num_steps"))  # the leg's final step
  if type(last) is not int or not steps or last != steps[-1]:
    return None, None
  step, which = tested.get("best_step"), "best validation"
  if step is None:
    step, which = last, "newest"
  return (step, which) if type(step) is int and step in steps else (None, None)


def retest(workdir: str, overrides=(), *, step=None, name=None, split="test") -> dict:
  """Re-tests the run in `workdir`; returns the result written to eval_<name>.json.

  split="validation" scores the validation split instead (image runs), so a
  test-time protocol can be chosen there rather than on the test episodes."""
  from metajax.train import set_override
  if split not in SPLITS:
    raise config_lib.ConfigError(f"split must be one of {SPLITS}, got {split!r}")
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise config_lib.ConfigError(f"{path} does not exist: --workdir must be a run's "
                                 "directory (one `python -m metajax.train` wrote)")
  with open(path) as f:
    saved = json.load(f)
  config = config_from_json(saved)
  allowed, changed = retest_keys(saved), {}
  for item in overrides:
    key, _, raw = item.partition("=")
    if key in config and key not in allowed:
      raise config_lib.ConfigError(
          f"--config.{key} would change what was trained or how its checkpoints were "
          f"ranked; a re-test may change only {', '.join(allowed)}"
          + (" ({} too where the run trained on {} {})".format(key, *TRAINED_INSTEAD[key])
             if key in TRAINED_INSTEAD else ""))
    set_override(config, key, raw)
    changed[key] = config[key]
  config_lib.validate(config, testing=True)
  # The run's CPU devices, so that its num_devices makes a mesh here too.
  sharding.start_cpu_devices(config, required=False)

  if split != "test" and config.task == "sinusoid":
    raise config_lib.ConfigError("sinusoid runs have no validation split: their "
                                 "tasks are drawn afresh (use a different eval_seed)")
  if name is None:  # from what changes the scores (not where data is or how many devices)
    name = ",".join(f"{k}={v}" for k, v in sorted(changed.items())
                    if k not in ("data_dir", "manual_dir", "num_devices")) or "retest"
    name = name.replace("/", "_").replace(" ", "")
    if split != "test":
      name = f"{split},{name}"
  elif not name or "/" in name:
    raise config_lib.ConfigError(f"--name {name!r} must be a non-empty file name part (no '/')")
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise config_lib.ConfigError(f"{os.path.abspath(directory)} does not exist: the run "
                                 "saved no checkpoint")
  # Read-only: training may still be saving into this directory.
  checkpoints = Checkpoints(directory, read_only=True)
  try:  # the step first: a bad --step is refused before any data is loaded
    steps = checkpoints.steps()
    if not steps:
      raise config_lib.ConfigError(f"{checkpoints.directory} holds no checkpoint")
    if step is None:
      step, which = _tested_step(workdir, steps)
      if step is None and os.path.exists(os.path.join(workdir, "eval.json")):
        print("note: eval.json is older than the newest checkpoint (or names one that is "
              "gone); choosing the checkpoint by the run's config instead", file=sys.stderr)
      if step is None:
        # No eval.json to say (a run still training): a few-shot run's
        # best-validated checkpoint if its last leg validates, else the newest.
        step = checkpoints.best_step() if config.task != "sinusoid" and config.eval_every \
            else None
        which = "best validation"
        if step is None:
          step, which = steps[-1], "newest"
    elif step not in steps:
      raise config_lib.ConfigError(f"no checkpoint of meta-step {step} in "
                                   f"{checkpoints.directory}; there are {steps}")
    else:
      which = "chosen"
    template, score = _prepare(config, split)
    state, meta = checkpoints.restore(step, template)
  finally:
    checkpoints.close()
  # The checkpoint must be of this run's config, bar what may differ between its
  # checkpoints (run length, logging, ...) and what this re-test changes.
  may_differ = allowed + ("num_steps",)
  check_resumable(meta["config"], dict(saved, **{k: meta["config"][k] for k in may_differ
                                                 if k in meta["config"]}),
                  checkpoints.directory)
  result = score(state)
  result.update({
      "retest_of": os.path.abspath(workdir), "overrides": changed,
      "checkpoint_step": int(step), "params": which, "iterations": config.num_steps,
      "seed": config.seed, "backend": jax.default_backend(), "jax_version": jax.__version__,
  })
  result["name"] = name
  if jax.process_index() == 0:
    loop.replace_file(os.path.join(workdir, f"eval_{name}.json"), json.dumps(result, indent=1))
  return result


def parse_args(argv):
  """--workdir DIR [--step N] [--name NAME] [--split test|validation]
  [--config.KEY=VALUE | --config.KEY VALUE]... -> (workdir, step, name, split, overrides)."""
  # allow_abbrev=False: a prefix such as --work must not silently mean --workdir.
  parser = argparse.ArgumentParser(prog="python -m metajax.retest", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   allow_abbrev=False)
  parser.add_argument("--workdir", required=True, help="the run's directory")
  parser.add_argument("--step", type=int, help="this checkpoint, not the best-validated one")
  parser.add_argument("--name", help="writes eval_NAME.json (default: from the overrides)")
  parser.add_argument("--split", default="test", choices=SPLITS)
  args, rest = parser.parse_known_args(argv)
  from metajax.train import config_overrides
  return args.workdir, args.step, args.name, args.split, config_overrides(parser, rest)


def summary(result) -> str:
  steps = result["steps"]
  if result.get("metric") == "accuracy":
    from metajax.fewshot import percent
    scores = [f"{s}: {percent(a, c)}"
              for s, a, c in zip(steps, result["accuracy"], result["ci95"])]
  else:
    scores = [f"K={k} " + ", ".join(f"{s}: {m:.3f} ± {c:.3f}" if m is not None
                                    else f"{s}: diverged"
                                    for s, m, c in zip(steps, r["mse"], r["ci95"]))
              for k, r in result["by_k_shot"].items()]
  return (f"{result['algorithm']}, checkpoint of meta-step {result['checkpoint_step']} "
          f"({result['params']}), {result['num_tasks']} {result.get('split', 'test')} tasks; "
          f"{result['metric']} after 0..{steps[-1]} steps:\n  " + "\n  ".join(scores))


def main(argv=None):
  from metajax.train import _user_errors
  argv = sys.argv[1:] if argv is None else argv
  try:
    workdir, step, name, split, overrides = parse_args(argv)
    result = retest(workdir, overrides, step=step, name=name, split=split)
  except _user_errors() as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(summary(result))
  print(f"written to {os.path.join(os.path.abspath(workdir), 'eval_' + result['name'] + '.json')}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
