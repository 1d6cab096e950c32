"""The algorithms as one meta-gradient function over a meta-batch.

  maml     exact second-order MAML          grad of mean_i maml_loss
  fomaml   first-order MAML                 same, first_order=True
  metasgd  Meta-SGD: learned per-parameter inner rates, differentiated jointly
  anil     ANIL: only the "head" adapts in the inner loop (with a head_split,
           on the body's features computed once per task: metajax.anil)
  mamlpp   MAML++: MAML whose switches (lslr, msl_steps, first_order_steps,
           per-step BN) are on in its experiment files (metajax.mamlpp)
  reptile  pseudo-gradient theta - mean_i phi_i
  imaml    implicit gradient of the proximal inner solution (metajax.imaml)
  protonet prototypical networks: no inner loop (metajax.protonet)

All that adapt run the single inner loop in `metajax.inner`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import jax

from metajax import mamlpp
from metajax.anil import HeadSplit, head_of, on_features
from metajax.batching import task_mean
from metajax.inner import LossFn, PyTree, remat_mode
from metajax.maml import maml_loss
from metajax.imaml import imaml_task_grad
from metajax.reptile import reptile_pseudo_grad


@dataclasses.dataclass(frozen=True)
class Algorithm:
  """Static (hashable) description of how to compute the meta-gradient."""
  name: str
  steps: int
  inner_lr: float
  first_order: bool = False
  learn_inner_lr: bool = False      # Meta-SGD
  head_only: bool = False           # ANIL
  inner_optimizer: str = "sgd"      # Reptile may use "adam"
  unroll: bool = False
  remat: Any = False                # bool or "off" | "dots" | "full" | "auto" (inner.remat_mode)
  batching: str = "vmap"            # see metajax.batching
  task_chunk: int = 1
  inner_batch: int = 0              # Reptile: support rows per inner step (0: all)
  carry_inner_adam: bool = False    # Reptile: inner Adam's state carries over (reptile.py)
  lam: float = 1.0                  # iMAML: proximal strength lambda
  cg_steps: int = 5                 # iMAML: conjugate-gradient iterations
  cg_damping: float = 0.0           # iMAML: CG damping (added to I)
  cg_lam_damping: float = 0.0       # iMAML: CG damping (added to lam)
  eval_lam: float = -1.0            # iMAML: lambda of test-time adaptation (< 0: lam)
  imaml_inner: str = "proximal"     # iMAML: training inner loop (metajax.imaml)
  lslr: bool = False                # MAML++: learned per-layer per-step inner rates
  msl_steps: int = 0                # MAML++: meta-steps with the multi-step loss
  first_order_steps: int = 0        # MAML++: meta-steps of first order before second
  per_step_bn: bool = False         # MAML++: loss_fn takes the inner step (BN sets)
  bn_outer_only: bool = False       # BN parameters not adapted in the inner loop

  def __post_init__(self):
    from metajax.config import ALGORITHMS  # config imports nothing of metajax
    if self.name not in ALGORITHMS:
      # Without this an unknown name would silently compute MAML's meta-gradient.
      raise ValueError(f"unknown algorithm {self.name!r}; expected one of {ALGORITHMS}")

  @property
  def freezes_batch_norm(self) -> bool:
    """The inner loop leaves the BN parameters to the outer loop (per-step BN
    as in MAML++, or bn_outer_only)."""
    return self.per_step_bn or self.bn_outer_only

  @property
  def remat_mode(self) -> str:
    """What the backward pass keeps of each inner step on this backend
    (`inner.remat_mode`); "off" where the inner loop takes no remat (Reptile,
    iMAML, ProtoNet). MAML++ phases that differ: e.g. "off then dots" (its
    multi-step-loss phase, then the last-step loss)."""
    from metajax.config import MAML_FAMILY
    if self.name not in MAML_FAMILY:
      return "off"
    modes = []
    for _, first_order, msl in mamlpp.phases(self.msl_steps, self.first_order_steps):
      mode = remat_mode(self.remat, first_order=self.first_order or first_order,
                        steps=self.steps, observes=msl)
      if not modes or modes[-1] != mode:
        modes.append(mode)
    return " then ".join(modes)

  @property
  def test_lam(self) -> float:
    """iMAML: the lambda a task adapts with at test (eval_lam; < 0: lam)."""
    return self.lam if self.eval_lam < 0 else self.eval_lam

  @classmethod
  def named(cls, name: str, *, first_order: bool = False, **fields) -> "Algorithm":
    """The algorithm called `name` (config.ALGORITHMS): sets the flags it implies."""
    return cls(name=name, first_order=first_order or name == "fomaml",
               learn_inner_lr=name == "metasgd", head_only=name == "anil",
               **fields)

  @classmethod
  def from_config(cls, config) -> "Algorithm":
    return cls.named(
        config.algorithm,
        steps=config.inner_steps,
        inner_lr=float(config.inner_lr),
        first_order=bool(config.first_order),
        inner_optimizer=config.inner_optimizer,
        unroll=config.unroll,
        remat=config.remat,
        batching=config.batching,
        task_chunk=config.task_chunk,
        inner_batch=config.inner_batch,
        carry_inner_adam=bool(config.carry_inner_adam),
        lam=float(config.imaml_lam),
        cg_steps=config.cg_steps,
        cg_damping=float(config.cg_damping),
        cg_lam_damping=float(config.cg_lam_damping),
        eval_lam=float(config.imaml_eval_lam),
        imaml_inner=config.imaml_inner,
        lslr=bool(config.lslr),
        msl_steps=config.msl_steps,
        first_order_steps=config.first_order_steps,
        per_step_bn=config.get("bn") == "per_step",
        bn_outer_only=bool(config.get("bn_outer_only", False)),
    )


def head_mask(params: PyTree) -> PyTree:
  """True for leaves under a top-level "head" module (ANIL adapts only these).

  Raises ValueError when `params` has no top-level "head" (a mask of all False
  would adapt nothing): name the adapted layer so, e.g. `nn.Dense(n, name="head")`.
  """
  if "head" not in params:
    keys = ", ".join(map(str, params)) or "none"
    hint = (' (these look like flax variables: pass variables["params"])'
            if "params" in params else "")
    raise ValueError(
        f"head_mask: params have no top-level 'head' module (top-level keys: {keys}){hint}; "
        "name the layer the inner loop adapts 'head', e.g. nn.Dense(n, name='head'), or pass "
        "your own mask")
  return {k: jax.tree.map(lambda _, h=(k == "head"): h, v) for k, v in params.items()}


def batch_norm_frozen_mask(params: PyTree) -> PyTree:
  """False for batch-norm parameters (bn_scale, bn_bias), True elsewhere."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: not any(getattr(k, "key", None) in ("bn_scale", "bn_bias")
                              for k in path), params)


def inner_mask(algo: Algorithm, params: PyTree) -> Optional[PyTree]:
  """Which leaves the inner loop adapts: ANIL the head; with per-step BN
  (MAML++) or bn_outer_only all but the BN parameters, which only the outer
  loop learns, as in MAML++'s and MAML's reference code; otherwise all (None)."""
  if algo.head_only:
    return head_mask(params)
  if algo.freezes_batch_norm:
    return batch_norm_frozen_mask(params)
  return None


def learns_inner_lr(algo: Algorithm) -> bool:
  """Meta-SGD (a rate per parameter entry) or LSLR (per leaf and inner step)."""
  return algo.learn_inner_lr or algo.lslr


def recorded_test_rate(algo: Algorithm, eval_inner_lr: float) -> Any:
  """The test-time inner rate as eval.json records it: eval_inner_lr > 0
  replaces any rate, learned ones included; otherwise "learned" or the
  training rate."""
  if eval_inner_lr > 0:
    return eval_inner_lr
  return "learned" if learns_inner_lr(algo) else algo.inner_lr


def inner_lr(algo: Algorithm, meta_params: dict) -> Any:
  """The inner rate: learned pytree (Meta-SGD, LSLR) or the fixed scalar."""
  return meta_params["inner_lr"] if learns_inner_lr(algo) else algo.inner_lr


def uses_head_split(algo: Algorithm, head_split: Optional[HeadSplit]) -> bool:
  """Whether ANIL's inner loop runs on features computed once (metajax.anil):
  a split is given and only the head adapts, at one rate for every step."""
  return (head_split is not None and algo.head_only and not learns_inner_lr(algo)
          and not algo.per_step_bn)


def meta_gradient(algo: Algorithm, loss_fn: LossFn, meta_params: dict,
                  tasks: dict, step=None, adam_carry=None, *,
                  head_split: Optional[HeadSplit] = None):
  """Mean query loss over the meta-batch and its meta-gradient.

  Args:
    meta_params: {"params": theta, "inner_lr": alpha pytree or None}.
    tasks: {"support": (x_BxKx..., y_BxK...), "query": (x_BxQx..., y_BxQ...)}.
    step: the meta-step (int scalar, may be traced); needed only by MAML++'s
      schedules (msl_steps, first_order_steps).
    adam_carry: Reptile with a carried inner Adam only (`metajax.reptile`):
      its state; the next one is then returned as a third output.
    head_split: ANIL only: the model's body/head split (`metajax.anil`); the
      body's features are then computed once per task instead of at every
      inner step (the same meta-gradient; docs/RESULTS.md, "ANIL: the body's
      features once per task").

  Returns:
    (loss, grads) with grads shaped like `meta_params`. For MAML-family
    algorithms grads = d/d(theta, alpha) mean_i L_query_i(adapt(theta, alpha));
    for Reptile grads["params"] = theta - mean_i phi_i (a pseudo-gradient).
  """
  params = meta_params["params"]
  if adam_carry is not None and algo.name != "reptile":
    raise ValueError(f"adam_carry is Reptile's; got algorithm {algo.name!r}")
  if algo.name == "reptile":
    pseudo, loss, *carry = reptile_pseudo_grad(
        loss_fn, params, tasks, steps=algo.steps, lr=algo.inner_lr,
        optimizer=algo.inner_optimizer, unroll=algo.unroll,
        batching=algo.batching, task_chunk=algo.task_chunk,
        inner_batch=algo.inner_batch, adam_carry=adam_carry)
    return (loss, {"params": pseudo, "inner_lr": None}, *carry)

  if algo.name == "protonet":
    # No inner loop: `loss_fn(params, task)` is the episode loss
    # (metajax.protonet.episode_loss with the embedding bound).
    one = lambda task: jax.value_and_grad(loss_fn)(params, task)
    loss, grads = task_mean(one, tasks, strategy=algo.batching, chunk=algo.task_chunk)
    return loss, {"params": grads, "inner_lr": None}

  if algo.name == "imaml":
    one = lambda task: imaml_task_grad(
        loss_fn, params, task, steps=algo.steps, lr=algo.inner_lr, lam=algo.lam,
        cg_steps=algo.cg_steps, cg_damping=algo.cg_damping,
        cg_lam_damping=algo.cg_lam_damping, inner=algo.imaml_inner)
    loss, grads = task_mean(one, tasks, strategy=algo.batching, chunk=algo.task_chunk)
    return loss, {"params": grads, "inner_lr": None}

  if not (algo.msl_steps or algo.first_order_steps):
    return _maml_family(algo, loss_fn, meta_params, tasks, first_order=algo.first_order,
                        head_split=head_split if uses_head_split(algo, head_split) else None)
  if step is None:
    raise ValueError("msl_steps / first_order_steps schedule by meta-step: pass step=")
  # MAML++: one program per training phase, the current one picked at run time.
  plan = mamlpp.phases(algo.msl_steps, algo.first_order_steps)
  weights = mamlpp.msl_weights(step, algo.steps, algo.msl_steps) if algo.msl_steps else None
  branches = [functools.partial(_maml_family, algo, loss_fn,
                                first_order=algo.first_order or first_order,
                                step_weights=weights if msl else None)
              for _, first_order, msl in plan]
  return jax.lax.switch(mamlpp.phase_index(step, [s for s, _, _ in plan]), branches,
                        meta_params, tasks)


def _maml_family(algo: Algorithm, loss_fn: LossFn, meta_params: dict, tasks: dict, *,
                 first_order: bool, step_weights=None,
                 head_split: Optional[HeadSplit] = None) -> tuple[jax.Array, dict]:
  """MAML, first-order MAML, Meta-SGD, ANIL, MAML++: grad of the mean maml_loss."""
  mask = inner_mask(algo, meta_params["params"])

  def task_loss(meta_params, task):
    params = meta_params["params"]
    if head_split is not None:  # ANIL: adapt the head on the body's features
      return maml_loss(
          head_split.loss, head_of(params), on_features(head_split, params, task),
          steps=algo.steps, lr=algo.inner_lr, first_order=first_order,
          unroll=algo.unroll, remat=algo.remat, step_weights=step_weights)
    return maml_loss(
        loss_fn, params, task, steps=algo.steps,
        lr=inner_lr(algo, meta_params), first_order=first_order,
        mask=mask, unroll=algo.unroll, remat=algo.remat, lr_per_step=algo.lslr,
        step_arg=algo.per_step_bn, step_weights=step_weights)

  # Per-task (loss, gradient), averaged: the gradient of the mean query loss.
  return task_mean(lambda task: jax.value_and_grad(task_loss)(meta_params, task),
                   tasks, strategy=algo.batching, chunk=algo.task_chunk)
