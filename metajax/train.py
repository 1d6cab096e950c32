"""Meta-training entry point.

  python -m metajax.train --config experiments/sine_maml.py --workdir DIR \
      [--config.KEY=VALUE ...]

Several hosts (or processes): the same command on each, plus --distributed
(auto-detected on Cloud TPU, SLURM, Open MPI, Kubernetes) or
--coordinator_address HOST:PORT --num_processes N --process_id I.

Writes DIR/config.json, DIR/metrics.jsonl (one JSON object per logged step),
DIR/eval.json (held-out post-adaptation loss with 95% CIs) and, for the
sinusoid, DIR/adaptation.png and DIR/curves.png.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import re
import sys

import jax

from metajax import config as config_lib
from metajax import loop, sharding
from metajax.algorithms import Algorithm
from metajax.checkpoint import Checkpoints
from metajax.evaluate import evaluate, make_validator
from metajax.step import initial_state, make_meta_step, make_outer_optimizer
from metajax.tasks.sinusoid import Problem


# ----------------------------------------------------------------- config I/O
def load_config(path: str, overrides=()):
  """Loads `get_config()` from an experiment file and applies KEY=VALUE overrides."""
  if not os.path.isfile(path):
    raise config_lib.ConfigError(f"config file {path!r} does not exist")
  spec = importlib.util.spec_from_file_location("_metajax_experiment", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise config_lib.ConfigError(f"{path} defines no get_config()")
  try:
    config = module.get_config()
  except TypeError as e:
    # ml_collections refuses a value of another type than the base config's.
    key = re.search(r"Could not override field '(\w+)'", str(e))
    if key is None:
      raise
    raise config_lib.ConfigError(
        f"{path}: get_config() sets {key.group(1)} to a value of another type than its "
        f"default in metajax.config: {e}"
        + (config_lib.REMAT_WAS_BOOL if key.group(1) == "remat" else "")) from None
  for item in overrides:
    key, _, raw = item.partition("=")
    set_override(config, key, raw)
  return config_lib.validate(config)


def set_override(config, key: str, raw: str):
  """Sets config[key] from a command-line string, keeping the key's type."""
  if key not in config:
    raise config_lib.unknown_key_error(key, config.keys())
  old = config[key]
  if key == "task" and raw != old:
    # The file's other keys belong to its task (a sinusoid file has no ways).
    raise config_lib.ConfigError(
        f"--config.task={raw} on a {old!r} experiment file: the task cannot change from the "
        f"command line; start from an experiment file of that task (experiments/, e.g. "
        f"{'omniglot_5w1s_maml.py' if raw != 'sinusoid' else 'sine_maml.py'})")
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    value = raw
  if isinstance(old, str) and not isinstance(value, str) and key in config_lib.CHOICES:
    value = raw  # e.g. remat=True: validate names the choices (and what True became)
  if isinstance(old, bool):
    if str(raw).lower() in ("true", "1", "yes"):
      value = True
    elif str(raw).lower() in ("false", "0", "no"):
      value = False
    else:
      raise config_lib.ConfigError(f"--config.{key} expects true/false, got {raw!r}")
  elif isinstance(old, float) and isinstance(value, int):
    value = float(value)
  elif isinstance(old, tuple) and isinstance(value, (int, float)):
    value = (value,)
  elif isinstance(old, tuple) and isinstance(value, list):
    value = tuple(value)
  if old is not None and not isinstance(value, type(old)):
    raise config_lib.ConfigError(
        f"--config.{key}={raw!r}: expected a {type(old).__name__} like {old!r}")
  with config.ignore_type():
    config[key] = value


LAUNCH_KEYS = ("coordinator_address", "num_processes", "process_id")


def config_overrides(parser, rest) -> list:
  """KEY=VALUE for each --config.KEY=VALUE or --config.KEY VALUE among the
  arguments `parser` (an argparse parser) left over; anything else is its error."""
  overrides, rest = [], list(rest)
  while rest:
    flag = rest.pop(0)
    key, eq, value = flag.partition("=")
    if not key.startswith("--config."):
      parser.error(f"unknown argument {flag!r}; expected --config.KEY=VALUE or the flags above")
    if not eq:
      if not rest:
        parser.error(f"{flag} needs a value")
      value = rest.pop(0)
    overrides.append(f"{key[len('--config.'):]}={value}")
  return overrides


def _at_least(low: int):
  """argparse type: an integer >= low."""
  def parse(raw: str) -> int:
    if not raw.isdigit() or int(raw) < low:
      raise argparse.ArgumentTypeError(f"expects an integer >= {low}, got {raw!r}")
    return int(raw)
  return parse


def parse_args(argv):
  """--config PATH --workdir DIR [--config.KEY=VALUE | --config.KEY VALUE]...
  [--distributed] [--coordinator_address HOST:PORT --num_processes N --process_id I]

  Returns (config_path, workdir, overrides, launch) where `launch` is None for
  a single-process run, else the keyword arguments of jax.distributed.initialize.
  A malformed command line exits with status 2 and argparse's usage message. A
  value that is itself one of these flags needs the = form: --config.tag=-h.
  """
  # allow_abbrev=False: a prefix such as --conf must not silently mean --config.
  parser = argparse.ArgumentParser(prog="python -m metajax.train", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   allow_abbrev=False)
  parser.add_argument("--config", required=True, metavar="PATH",
                      help="experiment file with get_config()")
  parser.add_argument("--workdir", required=True, metavar="DIR", help="outputs and checkpoints")
  parser.add_argument("--distributed", action="store_true",
                      help="jax.distributed with auto-detected cluster settings")
  parser.add_argument("--coordinator_address", metavar="HOST:PORT", help="HOST:PORT of process 0")
  parser.add_argument("--num_processes", type=_at_least(1), metavar="N")
  parser.add_argument("--process_id", type=_at_least(0), metavar="I")
  args, rest = parser.parse_known_args(argv)
  launch = {key: getattr(args, key) for key in LAUNCH_KEYS if getattr(args, key) is not None}
  if not (launch or args.distributed):
    launch = None
  return args.config, args.workdir, config_overrides(parser, rest), launch


def initialize_distributed(launch: dict) -> None:
  """jax.distributed.initialize(**launch): explicit address / count / id, or, with
  none given, auto-detection (Cloud TPU, SLURM, Open MPI, Kubernetes)."""
  # Multi-process CPU runs exchange gradients through gloo (the CPU client has
  # no collectives otherwise); GPU and TPU backends ignore this setting.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**launch)


# ----------------------------------------------------------------- training
def sinusoid_setup(config, training: bool = True):
  """(algo, problem, optimizer, mesh, state) of a sinusoid config; `state` is
  the placed initial TrainState, also the template checkpoints restore into.
  training=False (a re-test) skips the check that meta_batch splits over the
  devices: testing never splits a meta-batch."""
  algo = Algorithm.from_config(config)
  problem = Problem(config)
  optimizer = make_outer_optimizer(config)
  mesh = sharding.make_mesh(config.num_devices)
  if training:
    sharding.check_divisible(config.meta_batch, mesh, config.task_chunk, algo.batching)
  return algo, problem, optimizer, mesh, initial_state(config, algo, problem, optimizer, mesh)


def train_and_evaluate(config, workdir: str, *, progress: bool = True) -> dict:
  """Meta-trains per `config`, evaluates, writes outputs to `workdir`."""
  config_lib.validate(config)
  os.makedirs(workdir, exist_ok=True)
  if config.task != "sinusoid":
    from metajax import fewshot  # loads image data; not needed for the sinusoid
    return fewshot.train_and_evaluate(config, workdir, progress=progress)

  algo, problem, optimizer, mesh, state = sinusoid_setup(config)
  meta_step = make_meta_step(algo, problem.loss_fn, problem.sample_tasks, optimizer,
                             mesh=mesh, param_sharding=config.param_sharding,
                             skip_nonfinite=config.on_nan == "skip")
  validate = make_validator(config, algo, problem) if config.eval_every else None
  checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"),
                            keep=config.keep_checkpoints)
  state, stats = loop.run(
      config, state, meta_step, workdir, checkpoints,
      on_boundary=validate and (lambda s: validate(s.adaptation_params())),
      progress=progress, desc=f"{config.algorithm} K={config.k_shot}")
  checkpoints.close()

  meta_params = sharding.host_tree(state.adaptation_params())  # also for the plot below
  result = evaluate(config, algo, problem, meta_params)
  result.update({
      "algorithm": config.algorithm, "first_order": algo.first_order,
      "k_shot_train": config.k_shot, "k_query_train": config.k_query,
      "inner_steps_train": config.inner_steps, "meta_batch": config.meta_batch,
      "num_steps": config.num_steps, "seed": config.seed, **stats,
      "devices": mesh.size, "processes": jax.process_count(),
      "backend": jax.default_backend(), "jax_version": jax.__version__,
  })
  if jax.process_index() == 0:
    loop.replace_file(os.path.join(workdir, "eval.json"), json.dumps(result, indent=1))
  if config.plots and jax.process_index() == 0:
    from metajax import plots  # matplotlib only when plotting
    plots.plot_adaptation(os.path.join(workdir, "adaptation.png"), config, algo,
                          problem, meta_params)
    plots.plot_curves(os.path.join(workdir, "curves.png"),
                      os.path.join(workdir, "metrics.jsonl"))
  return result


def _summary(result) -> str:
  if result.get("metric") == "accuracy":
    from metajax.fewshot import summary
    return summary(result)
  lines = [f"{result['algorithm']}: {result['num_steps']} meta-steps in "
           f"{result['train_wall_s']:.1f}s (compile {result['compile_s']:.1f}s, "
           f"{1e3 * result['sec_per_meta_step']:.3f} ms/meta-step)"]
  for k, r in result["by_k_shot"].items():
    steps = [s for s in (0, 1, 10) if s < len(r["mse"])]
    lines.append(f"  K={k:>2}: " + ", ".join(
        f"{s} step{'s' * (s != 1)} " + (
            f"{r['mse'][s]:.3f}±{r['ci95'][s]:.3f}" if r["mse"][s] is not None
            else "diverged") for s in steps))
  return "\n".join(lines)


def _user_errors():
  """Errors whose message is the whole story: bad config, data or episode shape."""
  from metajax.datasets import DataError
  from metajax.tasks.episodes import EpisodeError
  return (config_lib.ConfigError, DataError, EpisodeError)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  workdir = None
  try:
    config_path, workdir, overrides, launch = parse_args(argv)
    new_workdir = not os.path.exists(workdir)
    config = load_config(config_path, overrides)
    sharding.start_cpu_devices(config, distributed=launch is not None)  # before JAX starts
    if launch is not None:
      initialize_distributed(launch)
    result = train_and_evaluate(config, workdir)
  except _user_errors() as e:
    print(f"error: {e}", file=sys.stderr)
    if workdir and new_workdir and os.path.isdir(workdir) and not os.listdir(workdir):
      os.rmdir(workdir)  # refused before writing anything: leave no empty run behind
    return 2
  except FloatingPointError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  if jax.process_index() == 0:
    print(_summary(result))
    print(f"outputs in {os.path.abspath(workdir)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
