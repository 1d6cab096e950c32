"""Configuration: the valid keys, their defaults, and validation.

Experiment files (`experiments/*.py`) start from `sinusoid_base()` or
`fewshot_base(dataset)` and change what they need. Every key a run may use is
defined here, so a misspelt key is an error that names the closest valid ones,
never a silently ignored setting.
"""

from __future__ import annotations

import difflib
import math

import ml_collections

ALGORITHMS = ("maml", "fomaml", "reptile", "metasgd", "anil", "imaml", "protonet", "mamlpp")
# The algorithms that meta-learn through metajax.maml.maml_loss (and so can
# take MAML++'s switches).
MAML_FAMILY = ("maml", "fomaml", "metasgd", "anil", "mamlpp")
# Algorithms that take no `unroll`: iMAML's inner loop is its own, ProtoNet has none.
NO_UNROLL = ("imaml", "protonet")
OUTER_OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "linear", "cosine")
TASKS = ("sinusoid", "omniglot", "mini_imagenet")
BN_MODES = ("transductive", "per_step", "none")
CONV_IMPLS = ("auto", "xla", "im2col", "shifted", "hybrid", "winograd")
DOWNSAMPLES = ("max_pool", "stride")  # metajax.models.DOWNSAMPLES
IMAML_INNER = ("proximal", "gd_then_pull")  # iMAML's training inner loop (metajax.imaml)
REMAT = ("auto", "off", "dots", "full")  # "auto" + metajax.inner.REMAT_MODES
REMAT_WAS_BOOL = " (remat is no longer a bool: True is now 'full', False 'off')"


def upgrade_saved(saved: dict) -> dict:
  """A run's saved config with values an older metajax wrote in today's form:
  remat was a bool (True: each inner step recomputed, now "full"); first_order
  and unroll were accepted and ignored where nothing reads them (now errors),
  so such a run ran with them False. A copy."""
  saved = dict(saved)
  if isinstance(saved.get("remat"), bool):
    saved["remat"] = "full" if saved["remat"] else "off"
  algorithm = saved.get("algorithm")
  if saved.get("first_order") and algorithm in ALGORITHMS and algorithm not in MAML_FAMILY:
    saved["first_order"] = False
  if saved.get("unroll") and algorithm in NO_UNROLL:
    saved["unroll"] = False
  return saved


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
  c.carry_inner_adam = False    # Reptile + adam: moments carry across tasks (reference code)
  c.inner_batch = 0             # support rows per inner step in training; 0 = all
  c.unroll = False              # Python-unrolled inner loop instead of lax.scan
  c.remat = "off"               # off | dots | full | auto: what jax.checkpoint keeps of
                                # each inner step (metajax.inner.remat_mode); a 40-40 MLP
                                # has no memory worth saving
  c.metasgd_lr_range = (0.005, 0.1)  # Meta-SGD's U[a, b] initial inner rates
  # Outer loop.
  c.meta_batch = 25
  c.batching = "vmap"           # task batching: vmap | scan | unroll (metajax.batching)
  c.task_chunk = 1              # tasks per chunk for scan/unroll; divides meta_batch
  c.outer_optimizer = "adam"    # one of OUTER_OPTIMIZERS
  c.outer_lr = 1e-3
  c.outer_lr_schedule = "constant"  # one of SCHEDULES, decays to outer_lr_min at num_steps
  c.outer_lr_min = 0.0          # the linear / cosine schedule's final rate
  c.outer_adam_eps = 1e-8       # Adam's epsilon (the iMAML authors' code: 1e-3)
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
  # Validation during training: MSE after inner_steps at K = k_shot on
  # val_tasks held-out tasks; ranks checkpoints for "best". 0 = never.
  c.eval_every = 0
  c.val_tasks = 100
  c.plots = True
  add_mamlpp_keys(c)
  add_imaml_keys(c)
  add_run_keys(c, checkpoint_every=5000)
  return c


def add_mamlpp_keys(c: ml_collections.ConfigDict) -> None:
  """MAML++'s switches (Antoniou et al. 2019; metajax.mamlpp), each on its own.

  The other two: bn="per_step" (image tasks) and outer_lr_schedule="cosine"
  with outer_lr_min. Any of them works with maml, fomaml, metasgd (not lslr),
  anil and mamlpp, except first_order_steps with a first-order algorithm.
  """
  c.lslr = False                # learned inner rate per parameter leaf and inner step
  # Either may exceed num_steps: the phase then lasts the whole run (the first
  # num_steps of a longer schedule, e.g. a run cut short at a checkpoint).
  c.msl_steps = 0               # meta-steps with the annealed multi-step loss; 0 = off
  c.first_order_steps = 0       # derivative-order annealing: meta-steps of first order


def add_imaml_keys(c: ml_collections.ConfigDict) -> None:
  """iMAML's implicit meta-gradient (used only with algorithm="imaml")."""
  c.imaml_lam = 1.0             # proximal strength lambda in (lam/2)||phi - theta||^2
  c.cg_steps = 5                # conjugate-gradient iterations for (I + H/lam)^-1
  c.cg_damping = 0.0            # CG solves ((1 + cg_damping) I + H/lam) g = grad
  c.cg_lam_damping = 0.0        # ... with H/(lam + cg_lam_damping) (authors' code: 10)
  c.imaml_eval_lam = -1.0       # lambda when adapting at test (and validation); < 0: imaml_lam;
                                # 0: plain GD on the support loss (authors' code)
  c.imaml_inner = "proximal"    # training inner loop: "proximal" (every step on the proximal
                                # loss) or "gd_then_pull" (plain GD, then one step toward theta:
                                # the authors' Omniglot code; pair it with imaml_eval_lam=0,
                                # their test, as the image experiment files do)


def add_run_keys(c: ml_collections.ConfigDict, *, checkpoint_every: int) -> None:
  """Devices, checkpoints and the NaN policy: the same keys for every task."""
  c.num_devices = 0             # devices the meta-batch is split over; 0 = all
  c.cpu_devices = 0             # on a CPU: split the host into this many JAX devices as the run
                                # starts; 0 = auto: 2 for Omniglot on >= 2 cores, else JAX's
                                # default (metajax.sharding.auto_cpu_devices)
  c.param_sharding = "replicated"  # params, rates, optimizer state: or "sharded" over devices
  c.checkpoint_every = checkpoint_every  # meta-steps between checkpoints; 0 = only at the end
  c.keep_checkpoints = 3        # newest checkpoints kept (plus the best-validated one)
  c.on_nan = "stop"             # non-finite loss or meta-gradient: "stop", or "skip" that update
                                # (a skipped update does not advance the outer rate's schedule)


def fewshot_base(dataset: str = "omniglot") -> ml_collections.ConfigDict:
  """N-way K-shot classification with conv-4 (MAML's reference settings).

  Defaults are Omniglot 5-way 1-shot MAML: 1 inner step at lr 0.4, meta-batch
  32, K query images per class in training, 10 inner steps and 15 query
  images per class at test. mini-ImageNet experiments override what differs.
  """
  if dataset not in TASKS[1:]:
    raise ConfigError(f"few-shot dataset must be one of {TASKS[1:]}, got {dataset!r}")
  c = ml_collections.ConfigDict()
  c.algorithm = "maml"
  c.seed = 0
  c.task = dataset              # "omniglot" or "mini_imagenet"
  # Data (metajax.datasets; prepared once with `python -m metajax.datasets`).
  c.dataset_config = "maml" if dataset == "omniglot" else "default"  # omniglot: maml | vinyals
  c.data_dir = ""               # prepared data; "" = tfds default (~/tensorflow_datasets)
  c.manual_dir = ""             # raw archives, used only if not yet prepared
  c.input_norm = "unit"         # "unit": x / 255; "standardize": per-channel train stats
  # Episodes.
  c.ways = 5
  c.k_shot = 1                  # support images per class
  c.k_query = 1                 # query images per class in meta-training
  c.k_shot_train = 0            # support images per class in meta-training; 0 = k_shot
  c.ways_train = 0              # classes per training episode (ProtoNet only); 0 = ways
  # Model: conv-4 (metajax.models.Conv4).
  c.filters = 64
  c.downsample = "max_pool"     # "max_pool": conv, BN, ReLU, 2x2 max-pool per block, features
                                # flattened; "stride": stride-2 convs, no pool, features averaged
                                # over positions (MAML's reference Omniglot model)
  c.bn = "transductive"         # one of BN_MODES; per_step: a BN (scale, bias) per inner step
  c.bn_outer_only = False       # True: BN scale/bias are learned by the outer loop only, not
                                # adapted in the inner loop, at training and test (as MAML's
                                # reference code, whose BN offset is outside its inner-loop
                                # weights; it has no scale); always so with bn="per_step"
  c.conv_impl = "auto"          # one of CONV_IMPLS; auto picks per backend
  # Inner loop.
  c.inner_steps = 1
  c.inner_lr = 0.4
  c.first_order = False
  c.inner_optimizer = "sgd"
  c.carry_inner_adam = False
  # Support images per inner step in meta-training, taken in turn from the
  # shuffled support set (Reptile's minibatches); 0 = all. Tests use all.
  c.inner_batch = 0
  c.unroll = False
  # What the backward pass keeps of each inner step: off (everything), dots
  # (the matrix products' outputs), full (nothing: each step is recomputed),
  # auto (dots for second order with >= 2 steps on CPU; metajax.inner.remat_mode).
  c.remat = "auto"
  c.metasgd_lr_range = (0.005, 0.1)
  # Outer loop.
  c.meta_batch = 32
  c.batching = "auto"           # vmap | scan | unroll | auto (per backend)
  c.task_chunk = 1
  c.outer_optimizer = "adam"
  c.outer_lr = 1e-3
  c.outer_lr_schedule = "constant"
  c.outer_lr_min = 0.0
  c.outer_adam_eps = 1e-8
  c.num_steps = 60_000
  c.steps_per_call = 50
  c.log_every = 500
  # Validation during training (picks the best parameters) and the final test.
  c.eval_every = 2000           # meta-steps between validation runs; 0 = never
  c.val_tasks = 200             # validation episodes (fixed by eval_seed)
  c.eval_tasks = 600            # test episodes (fixed by eval_seed)
  c.eval_query = 15             # query images per class at validation/test
  c.eval_max_steps = 10         # test-time inner steps (MAML used 10)
  # Test: score the query set after each of 0..eval_max_steps (True) or only
  # after the last (False; several times cheaper, as validation always is).
  c.test_every_step = True
  c.eval_batch = 25             # episodes per jitted evaluation call
  c.eval_seed = 20170309
  c.eval_inner_lr = -1.0
  c.plots = True
  add_mamlpp_keys(c)
  add_imaml_keys(c)
  add_run_keys(c, checkpoint_every=2000)
  return c


def base_for(config) -> ml_collections.ConfigDict:
  """The base config whose keys `config` must have (by its `task`)."""
  task = config.get("task", "sinusoid")
  if task not in TASKS:
    raise ConfigError(f"task must be one of {TASKS}, got {task!r}")
  return sinusoid_base() if task == "sinusoid" else fewshot_base(task)


_POSITIVE_INTS = ("task_chunk", "k_shot", "k_query", "inner_steps", "meta_batch", "num_steps",
                  "steps_per_call", "log_every", "eval_tasks", "eval_query", "ways",
                  "filters", "val_tasks", "eval_batch", "keep_checkpoints", "cg_steps")
_NONNEG_INTS = ("eval_max_steps", "eval_every", "k_shot_train", "inner_batch", "ways_train",
                "num_devices", "cpu_devices", "checkpoint_every", "msl_steps", "first_order_steps")
_POSITIVE_FLOATS = ("inner_lr", "outer_lr", "imaml_lam", "outer_adam_eps")
CHOICES = {"algorithm": ALGORITHMS, "outer_optimizer": OUTER_OPTIMIZERS,
            "outer_lr_schedule": SCHEDULES, "inner_optimizer": ("sgd", "adam"),
            "task": TASKS, "batching": ("vmap", "scan", "unroll", "auto"),
            "bn": BN_MODES, "conv_impl": CONV_IMPLS, "downsample": DOWNSAMPLES,
            "input_norm": ("unit", "standardize"), "on_nan": ("stop", "skip"),
            "param_sharding": ("replicated", "sharded"), "imaml_inner": IMAML_INNER,
            "remat": REMAT}


def _check_bn_outer_only(config) -> None:
  if not config.bn_outer_only:
    return
  if config.bn == "none":
    raise ConfigError("bn_outer_only=True with bn='none': there are no batch-norm "
                      "parameters to keep out of the inner loop; use bn='transductive' "
                      "or bn_outer_only=False")
  if config.algorithm not in MAML_FAMILY or config.algorithm == "anil":
    raise ConfigError(f"bn_outer_only=True keeps batch norm out of the inner loop of the "
                      f"MAML loss; it needs one of {tuple(a for a in MAML_FAMILY if a != 'anil')}"
                      f" (ANIL adapts only the head already), got {config.algorithm!r}")


def _check_mamlpp(config) -> None:
  algo = config.algorithm
  used = [k for k in ("lslr", "msl_steps", "first_order_steps") if config[k]]
  if config.get("bn") == "per_step":
    used.append("bn='per_step'")
  if used and algo not in MAML_FAMILY:
    raise ConfigError(f"{', '.join(used)}: MAML++ switches need an algorithm that adapts "
                      f"through the MAML loss, one of {MAML_FAMILY}; got {algo!r}")
  if config.lslr and algo == "metasgd":
    raise ConfigError("lslr=True with algorithm='metasgd': both learn the inner rates "
                      "(Meta-SGD per entry, LSLR per leaf and step); choose one")
  if config.first_order_steps and (algo == "fomaml" or config.first_order):
    raise ConfigError(f"first_order_steps={config.first_order_steps} switches first-order "
                      "to second-order MAML, but this run is first order throughout "
                      "(algorithm='fomaml' or first_order=True); use 0")
  m = config.outer_lr_min
  if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 <= m <= config.outer_lr:
    raise ConfigError(f"outer_lr_min must be a number in [0, outer_lr={config.outer_lr}], "
                      f"got {m!r}")


class ConfigError(ValueError):
  """A config key or value that metajax cannot run with."""


def unknown_key_error(key: str, valid) -> ConfigError:
  close = difflib.get_close_matches(key, list(valid), n=3, cutoff=0.5)
  hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
  return ConfigError(f"unknown config key {key!r}{hint} "
                     f"(valid keys: {', '.join(sorted(valid))})")


def _range(config, key) -> tuple:
  """config[key] as a (low, high) pair of finite numbers with low <= high."""
  v = config[key]
  try:
    lo, hi = v
  except (TypeError, ValueError):
    lo = hi = None
  if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
             for x in (lo, hi)) or lo > hi:
    raise ConfigError(f"{key} must be a pair (low, high) of finite numbers with low <= high, "
                      f"e.g. --config.{key}='({base_for(config)[key][0]}, "
                      f"{base_for(config)[key][1]})', got {v!r}")
  return lo, hi


def validate(config: ml_collections.ConfigDict, *,
             testing: bool = False) -> ml_collections.ConfigDict:
  """Checks keys against the task's base config and values for sense; returns config.
  testing=True (metajax.retest): what only training uses, validation, is not checked."""
  base = base_for(config)
  for key in config.keys():
    if key not in base:
      raise unknown_key_error(key, base.keys())
  for key in base.keys():
    if key not in config:
      raise ConfigError(f"config is missing key {key!r} (default: {base[key]!r}); "
                        "start experiment files from metajax.config.sinusoid_base() "
                        "or fewshot_base()")
  for key in _POSITIVE_INTS:
    if key not in base:
      continue
    v = config[key]
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
      raise ConfigError(f"{key} must be a positive integer, got {v!r}")
  for key in _NONNEG_INTS:
    if key not in base:
      continue
    v = config[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
      raise ConfigError(f"{key} must be an integer >= 0, got {v!r}")
  for key in _POSITIVE_FLOATS:
    v = config[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 \
        or not math.isfinite(v):
      raise ConfigError(f"{key} must be a finite number > 0, got {v!r}")
  for key, choices in CHOICES.items():
    if key in base and config[key] not in choices:
      was = (REMAT_WAS_BOOL
             if key == "remat" and str(config[key]).lower() in ("true", "false") else "")
      raise ConfigError(f"{key} must be one of {choices}, got {config[key]!r}{was}")
  for key in ("eval_shots", "hidden"):
    if key not in base:
      continue
    v = tuple(config[key])
    if not v or not all(isinstance(i, int) and not isinstance(i, bool) and i > 0
                        for i in v):
      raise ConfigError(f"{key} must be a non-empty tuple of positive integers, got {v!r}")
  if config.carry_inner_adam and (config.algorithm, config.inner_optimizer) != ("reptile",
                                                                                "adam"):
    raise ConfigError("carry_inner_adam=True carries Reptile's inner Adam state; it needs "
                      "algorithm='reptile' and inner_optimizer='adam' (got "
                      f"{config.algorithm!r}, {config.inner_optimizer!r}); use False")
  if config.inner_optimizer != "sgd" and config.algorithm != "reptile":
    raise ConfigError(f"inner_optimizer={config.inner_optimizer!r} is only supported "
                      f"for algorithm='reptile' (got algorithm={config.algorithm!r}); "
                      "use 'sgd'")
  for key in ("cg_damping", "cg_lam_damping"):
    d = config[key]
    if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d < math.inf:
      raise ConfigError(f"{key} must be a finite number >= 0, got {d!r}")
  r = config.eval_inner_lr
  if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r == 0:
    raise ConfigError(f"eval_inner_lr must be a finite number, > 0 (the test-time rate) or "
                      f"< 0 (the training rate, or Meta-SGD's learned rates), got {r!r}")
  if config.task == "sinusoid":
    for key in ("amplitude", "phase", "x_range"):
      _range(config, key)
  e = config.imaml_eval_lam
  if isinstance(e, bool) or not isinstance(e, (int, float)) or not -math.inf < e < math.inf:
    raise ConfigError(f"imaml_eval_lam must be a finite number (< 0: imaml_lam), got {e!r}")
  if config.inner_batch and config.algorithm != "reptile":
    raise ConfigError(f"inner_batch={config.inner_batch} is Reptile's inner minibatch size; "
                      f"algorithm={config.algorithm!r} adapts on the whole support set: use 0")
  support_rows = (config.k_shot if config.task == "sinusoid" else
                  (config.ways_train or config.ways) * (config.k_shot_train or config.k_shot))
  if config.inner_batch > support_rows:
    raise ConfigError(f"inner_batch={config.inner_batch} exceeds the {support_rows} "
                      "support rows of a training task; use 0 (all) or fewer")
  if config.get("ways_train", 0) and config.algorithm != "protonet":
    raise ConfigError(f"ways_train={config.ways_train} needs algorithm='protonet' (a "
                      f"{config.ways}-way head is trained for {config.algorithm!r}); use 0")
  if config.algorithm == "protonet" and config.task == "sinusoid":
    raise ConfigError("algorithm='protonet' classifies images: use task='omniglot' or "
                      "'mini_imagenet' (fewshot_base), not the sinusoid")
  if config.task == "sinusoid" and config.batching == "auto":
    raise ConfigError("batching='auto' is for image tasks; the sinusoid uses 'vmap', "
                      "'scan' or 'unroll'")
  if config.batching != "vmap" and config.meta_batch % config.task_chunk:
    raise ConfigError(f"task_chunk={config.task_chunk} must divide "
                      f"meta_batch={config.meta_batch} for batching={config.batching!r}")
  _check_mamlpp(config)
  # Keys an algorithm would otherwise ignore while eval.json records them.
  if config.first_order and config.algorithm not in MAML_FAMILY:
    raise ConfigError(f"first_order=True drops the second-order terms of the MAML loss; "
                      f"algorithm={config.algorithm!r} has none (Reptile and iMAML never "
                      "differentiate through the inner loop, ProtoNet has none): use False")
  if config.unroll and config.algorithm in NO_UNROLL:
    raise ConfigError(f"unroll=True unrolls the inner loop of MAML-family algorithms and "
                      f"Reptile; algorithm={config.algorithm!r} does not use it: use False")
  if config.task != "sinusoid":
    _check_bn_outer_only(config)
  lo, _ = _range(config, "metasgd_lr_range")
  if not lo > 0:
    raise ConfigError(f"metasgd_lr_range must satisfy 0 < low <= high, got "
                      f"{tuple(config.metasgd_lr_range)!r}")
  if config.task != "sinusoid":
    validates = config.eval_every > 0 and not testing
    if config.eval_tasks % config.eval_batch or (
        validates and config.val_tasks % config.eval_batch):
      raise ConfigError(f"eval_batch={config.eval_batch} must divide eval_tasks="
                        f"{config.eval_tasks}" + (f" and val_tasks={config.val_tasks}"
                                                  if validates else ""))
    configs = ("maml", "vinyals") if config.task == "omniglot" else ("default",)
    if config.dataset_config not in configs:
      raise ConfigError(f"dataset_config for {config.task} must be one of {configs}, "
                        f"got {config.dataset_config!r}")
  return config
