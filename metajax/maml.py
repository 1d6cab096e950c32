"""The MAML loss: query loss after adapting on the support set.

  L(theta) = loss_fn(adapt(theta, support), query)

`jax.grad(maml_loss)` w.r.t. `params` is the exact second-order MAML
meta-gradient (Finn et al. 2017, eq. 1 differentiated through the inner
steps); with `first_order=True` it is first-order MAML. With `lr` a pytree
it is Meta-SGD (Li et al. 2017) and `jax.grad` w.r.t. `lr` learns the rates;
with `mask` selecting the head it is ANIL (Raghu et al. 2020). With
`step_weights` it is MAML++'s multi-step loss (Antoniou et al. 2019):
sum_t w_t * loss_fn(phi_t, query) over the params phi_t after every step t.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from metajax.inner import LossFn, PyTree, inner_loop


def maml_loss(
    loss_fn: LossFn,
    params: PyTree,
    task: dict,
    *,
    steps: int,
    lr: Any,
    first_order: bool = False,
    mask: Optional[PyTree] = None,
    unroll: bool = False,
    remat: Any = False,
    lr_per_step: bool = False,
    step_arg: bool = False,
    step_weights: Optional[jax.Array] = None,
) -> jax.Array:
  """Query loss of one task after `steps` inner steps on its support set.

  Args:
    loss_fn: `loss_fn(params, (x, y)) -> scalar` (with `step=t` if step_arg).
    params: meta-parameters theta (pytree).
    task: {"support": (x_KxD, y_KxO), "query": (x_QxD, y_QxO)} for one task;
      `jax.vmap` over a leading task axis for a meta-batch.
    steps, lr, first_order, mask, unroll, remat, lr_per_step, step_arg: as in
      `metajax.inner.inner_loop`.
    step_weights: None (the query loss after the last step) or weights_T, one
      per inner step: the loss is sum_t weights_T[t] * query loss after step t.

  Returns:
    scalar query loss. Differentiable w.r.t. `params` and `lr`.
  """
  query = task["query"]
  # MSL: the query loss after every step (inner_loop passes `step` if step_arg).
  observe = None if step_weights is None else (
      lambda p, **step: loss_fn(p, query, **step))
  phi, losses_T = inner_loop(
      loss_fn, params, task["support"], steps=steps, lr=lr, first_order=first_order,
      mask=mask, unroll=unroll, remat=remat, lr_per_step=lr_per_step,
      step_arg=step_arg, observe=observe)
  if step_weights is not None:
    return jnp.sum(step_weights * losses_T)
  # The final query loss uses the last step's per-step parameters, as the
  # support loss of that step did.
  return loss_fn(phi, query, step=max(steps - 1, 0)) if step_arg else loss_fn(phi, query)
