"""The MAML loss: query loss after adapting on the support set.

  L(theta) = loss_fn(adapt(theta, support), query)

`jax.grad(maml_loss)` w.r.t. `params` is the exact second-order MAML
meta-gradient (Finn et al. 2017, eq. 1 differentiated through the inner
steps); with `first_order=True` it is first-order MAML. With `lr` a pytree
it is Meta-SGD (Li et al. 2017) and `jax.grad` w.r.t. `lr` learns the rates;
with `mask` selecting the head it is ANIL (Raghu et al. 2020).
"""

from __future__ import annotations

from typing import Any, Optional

import jax

from metajax.inner import LossFn, PyTree, adapt


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
    remat: bool = False,
) -> jax.Array:
  """Query loss of one task after `steps` inner steps on its support set.

  Args:
    loss_fn: `loss_fn(params, (x, y)) -> scalar`.
    params: meta-parameters theta (pytree).
    task: {"support": (x_KxD, y_KxO), "query": (x_QxD, y_QxO)} for one task;
      `jax.vmap` over a leading task axis for a meta-batch.
    steps, lr, first_order, mask, unroll, remat: as in `metajax.adapt`.

  Returns:
    scalar `loss_fn(phi, query)` with phi the adapted params. Differentiable
    w.r.t. `params` and `lr`.
  """
  phi = adapt(loss_fn, params, task["support"], steps=steps, lr=lr,
              first_order=first_order, mask=mask, unroll=unroll, remat=remat)
  return loss_fn(phi, task["query"])
