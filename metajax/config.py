"""Configuration: the valid keys, their defaults, and validation.

Experiment files (`experiments/*.py`) start from `sinusoid_base()` and change
what they need. Every key a run may use is defined here, so a misspelt key is
an error that names the closest valid ones, never a silently ignored setting.
"""

from __future__ import annotations

import difflib
import math

import ml_collections

ALGORITHMS = ("maml", "fomaml", "reptile", "metasgd", "anil")
OUTER_OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "linear", "cosine")


def sinusoid_base() -> ml_collections.ConfigDict:
  """MAML paper sinusoid settings (Finn et al. 2017, sec. 5.1 and app. A.1)."""
  c = ml_collections.ConfigDict()
  c.algorithm = "maml"          # one of ALGORITHMS
  c.seed = 0
  c.task = "sinusoid"
  # Task distribution.
  c.k_shot = 10                 # support points per task
  c.k_query = 10                # query points per task (meta-training)
  c.amplitude = (0.1, 5.0)
  c.phase = (0.0, math.pi)
  c.x_range = (-5.0, 5.0)
  # Model.
  c.hidden = (40, 40)
  # Inner loop.
  c.inner_steps = 1
  c.inner_lr = 0.01             # fixed inner rate (metasgd learns its own)
  c.first_order = False         # True: first-order MAML/Meta-SGD/ANIL
  c.inner_optimizer = "sgd"     # "sgd" or "adam" (Reptile only)
  c.unroll = False              # Python-unrolled inner loop instead of lax.scan
  c.remat = False               # jax.checkpoint each inner step
  c.metasgd_lr_range = (0.005, 0.1)  # Meta-SGD's U[a, b] initial inner rates
  # Outer loop.
  c.meta_batch = 25
  c.batching = "vmap"           # task batching: vmap | scan | unroll (metajax.batching)
  c.task_chunk = 1              # tasks per chunk for scan/unroll; divides meta_batch
  c.outer_optimizer = "adam"    # one of OUTER_OPTIMIZERS
  c.outer_lr = 1e-3
  c.outer_lr_schedule = "constant"  # one of SCHEDULES, decays to 0 at num_steps
  c.num_steps = 70_000          # meta-steps (MAML: 70k)
  c.steps_per_call = 500        # meta-steps per jitted call (lax.scan)
  c.log_every = 1000            # meta-steps between metrics.jsonl lines
  # Evaluation (after training).
  c.eval_tasks = 600
  c.eval_shots = (5, 10, 20)
  c.eval_max_steps = 10
  c.eval_query = 100            # query points per evaluation task
  c.eval_seed = 20170309        # same held-out tasks for every run
  c.eval_inner_lr = -1.0        # < 0: use the training inner_lr
  c.plots = True
  return c


_POSITIVE_INTS = ("task_chunk", "k_shot", "k_query", "inner_steps", "meta_batch", "num_steps",
                  "steps_per_call", "log_every", "eval_tasks", "eval_query")
_NONNEG_INTS = ("eval_max_steps",)
_POSITIVE_FLOATS = ("inner_lr", "outer_lr")
_CHOICES = {"algorithm": ALGORITHMS, "outer_optimizer": OUTER_OPTIMIZERS,
            "outer_lr_schedule": SCHEDULES, "inner_optimizer": ("sgd", "adam"),
            "task": ("sinusoid",), "batching": ("vmap", "scan", "unroll")}


class ConfigError(ValueError):
  """A config key or value that metajax cannot run with."""


def unknown_key_error(key: str, valid) -> ConfigError:
  close = difflib.get_close_matches(key, list(valid), n=3, cutoff=0.5)
  hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
  return ConfigError(f"unknown config key {key!r}{hint} "
                     f"(valid keys: {', '.join(sorted(valid))})")


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks keys against `sinusoid_base()` and values for sense; returns config."""
  base = sinusoid_base()
  for key in config.keys():
    if key not in base:
      raise unknown_key_error(key, base.keys())
  for key in base.keys():
    if key not in config:
      raise ConfigError(f"config is missing key {key!r} (default: {base[key]!r}); "
                        "start experiment files from metajax.config.sinusoid_base()")
  for key in _POSITIVE_INTS:
    v = config[key]
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
      raise ConfigError(f"{key} must be a positive integer, got {v!r}")
  for key in _NONNEG_INTS:
    v = config[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
      raise ConfigError(f"{key} must be an integer >= 0, got {v!r}")
  for key in _POSITIVE_FLOATS:
    v = config[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 \
        or not math.isfinite(v):
      raise ConfigError(f"{key} must be a finite number > 0, got {v!r}")
  for key, choices in _CHOICES.items():
    if config[key] not in choices:
      raise ConfigError(f"{key} must be one of {choices}, got {config[key]!r}")
  for key in ("eval_shots", "hidden"):
    v = tuple(config[key])
    if not v or not all(isinstance(i, int) and not isinstance(i, bool) and i > 0
                        for i in v):
      raise ConfigError(f"{key} must be a non-empty tuple of positive integers, got {v!r}")
  if config.inner_optimizer != "sgd" and config.algorithm != "reptile":
    raise ConfigError(f"inner_optimizer={config.inner_optimizer!r} is only supported "
                      f"for algorithm='reptile' (got algorithm={config.algorithm!r}); "
                      "use 'sgd'")
  if config.batching != "vmap" and config.meta_batch % config.task_chunk:
    raise ConfigError(f"task_chunk={config.task_chunk} must divide "
                      f"meta_batch={config.meta_batch} for batching={config.batching!r}")
  lo, hi = config.metasgd_lr_range
  if not 0 < lo <= hi:
    raise ConfigError(f"metasgd_lr_range must satisfy 0 < low <= high, got {(lo, hi)!r}")
  return config
