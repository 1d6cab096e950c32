"""The inner loop: task adaptation by gradient steps on the support set.

Every algorithm in metajax (MAML, first-order MAML, Reptile, Meta-SGD, ANIL)
adapts through `inner_loop`; there is no other copy of it.

A step is  phi <- phi - lr * P(grad_phi loss_fn(phi, support))  where P is the
identity (SGD) or Adam's preconditioner (Reptile's inner optimiser). Because
the loop is written with `jax.grad` and `lax.scan`, `jax.grad` of anything
computed from its output differentiates *through* the steps: that is exact
second-order MAML. `first_order=True` stops the gradient at each inner
gradient, which drops the Hessian terms (first-order MAML).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax import tn_product

PyTree = Any
Batch = Any  # usually (x, y)
LossFn = Callable[[PyTree, Batch], jax.Array]

INNER_OPTIMIZERS = ("sgd", "adam")
# What the backward pass keeps of each inner step (`remat`): everything, only
# the matrix products' outputs (the rest is recomputed), or only the step's
# inputs (the whole step is recomputed).
REMAT_MODES = ("off", "dots", "full")


def remat_mode(remat: Any, *, first_order: bool, steps: int, observes: bool = False,
               backend=None) -> str:
  """`remat` as one of REMAT_MODES: True is "full", False or None "off".

  "auto" is "dots" for second-order gradients through >= 2 inner steps on CPU
  when no value is observed after each step, else "off". Measured on the
  conv-4 benchmarks (docs/RESULTS.md, "saving only the matrix products"):
  second-order MAML keeps 9-10% less peak memory on Omniglot 20w1s and
  mini-ImageNet 5w1s (5 steps) for a few percent more time (on Omniglot 20w1s
  1-9% by host and hour, so the benchmark's preset runs "off"); at one step it
  saves nothing, and first-order gradients keep no inner-step residuals to
  save. MAML++'s multi-step loss (`observes`: the query loss after every step,
  recomputed too) was 22-49% slower with it. Not measured on other backends,
  so "auto" leaves them "off".
  """
  if remat is None or remat is False:
    return "off"
  if remat is True:
    return "full"
  if remat == "auto":
    backend = backend or jax.default_backend()
    return ("dots" if not first_order and steps >= 2 and not observes and backend == "cpu"
            else "off")
  if remat not in REMAT_MODES:
    raise ValueError(f"remat must be one of {REMAT_MODES}, 'auto', True or False; "
                     f"got {remat!r}")
  return remat


def _preconditioner(name: str) -> optax.GradientTransformation:
  if name == "sgd":
    return optax.identity()
  if name == "adam":
    # Reptile's reference code: TensorFlow's Adam with beta1 = 0 (beta2 0.999).
    return optax.scale_by_adam(b1=0.0, b2=0.999)
  raise ValueError(f"inner optimizer {name!r} is not one of {INNER_OPTIMIZERS}")


def fresh_adam_carry(params: PyTree) -> dict:
  """The carried inner-Adam state before any step: {"count": 0, "nu": zeros
  like params}. With beta1 = 0 the first moment is just the last gradient, so
  the second moment and the step count are all there is to carry."""
  return {"count": jnp.zeros((), jnp.int32),
          "nu": jax.tree.map(jnp.zeros_like, params)}


def _scale(lr: Any, updates: PyTree) -> PyTree:
  """-lr * updates, with lr a scalar or a pytree shaped like the params."""
  if isinstance(lr, (int, float)) or (hasattr(lr, "ndim") and lr.ndim == 0):
    return jax.tree.map(lambda u: -lr * u, updates)
  return jax.tree.map(lambda a, u: -a * u, lr, updates)


def inner_loop(
    loss_fn: LossFn,
    params: PyTree,
    support: Batch,
    *,
    steps: int,
    lr: Any,
    first_order: bool = False,
    mask: Optional[PyTree] = None,
    optimizer: str = "sgd",
    observe: Optional[Callable[[PyTree], Any]] = None,
    unroll: bool = False,
    remat: Any = False,
    inner_batch: int = 0,
    lr_per_step: bool = False,
    step_arg: bool = False,
    adam_carry: Optional[dict] = None,
):
  """Runs `steps` inner gradient steps; returns (adapted_params, observed), or
  (adapted_params, observed, adam_carry_after) when `adam_carry` is given.

  Args:
    loss_fn: `loss_fn(params, batch) -> scalar`.
    params: the initial (meta-learned) parameters theta, any pytree.
    support: the support batch passed to `loss_fn`, e.g. (x_KxD, y_KxO).
    steps: number of inner steps (>= 0; 0 returns `params` unchanged).
    lr: inner learning rate, a scalar or a pytree like `params` (Meta-SGD).
    first_order: if True, each inner gradient is treated as a constant by
      outer differentiation (first-order MAML).
    mask: optional pytree of bools like `params`; only leaves marked True are
      adapted (ANIL: the head). Other leaves pass through unchanged and no
      inner gradient is computed for them.
    optimizer: "sgd" or "adam" (Reptile's inner optimiser, beta1 = 0).
    observe: optional `observe(params) -> pytree` evaluated after every step;
      its values are stacked along a leading axis of length `steps`.
    unroll: unroll the steps in Python instead of `lax.scan`.
    remat: what the backward pass keeps of each step (`jax.checkpoint`),
      trading compute for memory in second-order MAML: False / "off" (all of
      it), "dots" (the matrix products' outputs; the rest is recomputed),
      True / "full" (the step's inputs; the step is recomputed), or "auto"
      (`remat_mode`).
    inner_batch: 0 (default) uses the whole support set at every step; b > 0
      gives step t the rows t*b ... t*b + b - 1 (mod K) of the support, so
      successive steps walk through it in minibatches (Reptile's inner loop:
      shuffle the rows beforehand for random minibatches).
    lr_per_step: `lr` is a pytree like `params` whose leaves have shape (S,):
      step t uses rate lr[min(t, S - 1)] for that whole leaf (MAML++'s
      per-layer per-step rates, LSLR).
    step_arg: `loss_fn(params, batch, step=t)` and `observe(params, step=t)`
      also receive the index t of the inner step (0-based, traced), e.g. to
      pick per-step batch-norm parameters (MAML++). `observe` after step t
      gets the same t as the support loss of step t.
    adam_carry: optimizer="adam" only: start from this inner-Adam state,
      {"count": int32 scalar, "nu": pytree like params} (`fresh_adam_carry`),
      instead of a fresh one, and also return the state after the steps.
      Reptile's reference code keeps its inner Adam's moments from task to
      task; `metajax.reptile` carries them this way.
  """
  if steps < 0:
    raise ValueError(f"inner steps must be >= 0, got {steps}")
  if mask is None:
    mask = jax.tree.map(lambda _: True, params)
  leaves, treedef = jax.tree.flatten(params)
  mask_leaves = treedef.flatten_up_to(mask)
  adapt_idx = [i for i, m in enumerate(mask_leaves) if m]
  if isinstance(lr, (int, float)) or (hasattr(lr, "ndim") and lr.ndim == 0):
    if lr_per_step:
      raise ValueError(f"lr_per_step=True needs a pytree like params of per-step rates, "
                       f"leaves of shape (S,); got the scalar rate {lr!r}")
    lr_leaves = lr
  else:
    lr_all = treedef.flatten_up_to(lr)
    lr_leaves = [lr_all[i] for i in adapt_idx]

  def merge(adapted):
    out = list(leaves)
    for i, a in zip(adapt_idx, adapted):
      out[i] = a
    return jax.tree.unflatten(treedef, out)

  def lr_at(t):
    if not lr_per_step:
      return lr_leaves
    return [a[jnp.minimum(t, a.shape[0] - 1)] for a in lr_leaves]

  def at(fn, t):  # loss_fn / observe, given the step index when step_arg
    return partial(fn, step=t) if step_arg else fn

  precond = _preconditioner(optimizer)
  adapted0 = [leaves[i] for i in adapt_idx]
  opt_state0 = precond.init(adapted0)
  if adam_carry is not None:
    if optimizer != "adam":
      raise ValueError(f"adam_carry needs optimizer='adam', got {optimizer!r}")
    nu_all = treedef.flatten_up_to(adam_carry["nu"])
    opt_state0 = opt_state0._replace(count=adam_carry["count"],
                                     nu=[nu_all[i] for i in adapt_idx])

  batch_idx_TxB = None
  if inner_batch:
    n = jax.tree.leaves(support)[0].shape[0]
    if inner_batch > n:
      raise ValueError(f"inner_batch={inner_batch} exceeds the {n} support rows")
    batch_idx_TxB = (np.arange(steps)[:, None] * inner_batch
                     + np.arange(inner_batch)[None]) % n

  def step(carry, xs):
    t, idx_B = xs
    adapted, opt_state = carry
    # The whole support set, or this step's minibatch of it.
    batch = support if idx_B is None else jax.tree.map(lambda a: a[idx_B], support)
    grads = jax.grad(lambda a: at(loss_fn, t)(merge(a), batch))(adapted)
    if first_order:
      grads = jax.lax.stop_gradient(grads)
    updates, opt_state = precond.update(grads, opt_state, adapted)
    adapted = jax.tree.map(jnp.add, adapted, _scale(lr_at(t), updates))
    seen = None if observe is None else at(observe, t)(merge(adapted))
    return (adapted, opt_state), seen

  mode = remat_mode(remat, first_order=first_order, steps=steps, observes=observe is not None)
  if mode != "off":
    step = jax.checkpoint(step, policy=tn_product.dots_saveable if mode == "dots" else None)
  carry = (adapted0, opt_state0)
  if unroll or steps == 0:
    seen_list = []
    for t in range(steps):
      carry, seen = step(carry, (t, None if batch_idx_TxB is None else batch_idx_TxB[t]))
      seen_list.append(seen)
    observed = None
    if observe is not None and seen_list:
      observed = jax.tree.map(lambda *xs: jnp.stack(xs), *seen_list)
  else:
    carry, observed = jax.lax.scan(step, carry, (jnp.arange(steps), batch_idx_TxB),
                                   length=steps)
  if adam_carry is None:
    return merge(carry[0]), observed
  nu = list(nu_all)  # leaves not adapted keep their carried moment
  for i, n in zip(adapt_idx, carry[1].nu):
    nu[i] = n
  return merge(carry[0]), observed, {"count": carry[1].count,
                                     "nu": jax.tree.unflatten(treedef, nu)}


def adapt(
    loss_fn: LossFn,
    params: PyTree,
    support: Batch,
    *,
    steps: int,
    lr: Any,
    first_order: bool = False,
    mask: Optional[PyTree] = None,
    optimizer: str = "sgd",
    unroll: bool = False,
    remat: Any = False,
    inner_batch: int = 0,
    lr_per_step: bool = False,
    step_arg: bool = False,
) -> PyTree:
  """Adapts `params` to one task: `steps` gradient steps on `support`.

  phi_0 = params;  phi_{t+1} = phi_t - lr * grad loss_fn(phi_t, support).

  Differentiable in `params` and `lr`: `jax.grad` of a function of the result
  is the exact (second-order) derivative through all steps, unless
  `first_order=True`. Shapes are whatever `loss_fn` takes; for one task of the
  sinusoid benchmark `support = (x_Kx1, y_Kx1)`. To adapt a batch of tasks,
  `jax.vmap` this over the leading axis of `support`.

  See `inner_loop` for `mask` (ANIL), `optimizer` (Reptile), `unroll`, `remat`,
  `inner_batch` (minibatches of the support set), `lr_per_step` and
  `step_arg` (MAML++'s per-step rates and batch norm).
  """
  adapted, _ = inner_loop(
      loss_fn, params, support, steps=steps, lr=lr, first_order=first_order,
      mask=mask, optimizer=optimizer, unroll=unroll, remat=remat,
      inner_batch=inner_batch, lr_per_step=lr_per_step, step_arg=step_arg)
  return adapted
