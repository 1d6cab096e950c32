"""Reptile (Nichol et al. 2018) as a pseudo-gradient.

  theta <- theta + epsilon * (mean_i phi_i - theta)

is one step of gradient descent with step size epsilon on the pseudo-gradient
g = theta - mean_i phi_i, so any optax optimiser can apply it (plain SGD with
learning rate epsilon gives the paper's update exactly). phi_i is task i's
adapted parameters from the shared inner loop (`metajax.inner`), with SGD or
Adam (beta1 = 0, as in the paper) as inner optimiser. Nothing is
differentiated through the inner loop.

Inner Adam's state: the reference code runs the tasks one after another with
one TensorFlow Adam whose moments carry over from task to task, meta-step to
meta-step, and into evaluation. With `adam_carry` every task of the meta-batch
starts from the carried state and the next carried state is the mean over
the tasks of their final second moments (the tasks run in parallel here), its
count advanced by the inner steps; without it each task's Adam starts fresh.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from metajax.batching import task_mean
from metajax.inner import LossFn, PyTree, inner_loop


def reptile_pseudo_grad(
    loss_fn: LossFn,
    params: PyTree,
    tasks: dict,
    *,
    steps: int,
    lr: Any,
    optimizer: str = "sgd",
    unroll: bool = False,
    batching: str = "vmap",
    task_chunk: int = 1,
    inner_batch: int = 0,
    adam_carry: dict | None = None,
):
  """Returns (theta - mean_i phi_i, mean query loss after adaptation), and the
  next carried inner-Adam state when `adam_carry` is given.

  Args:
    tasks: {"support": (x_BxKxD, y_BxKxO), "query": (x_BxQxD, y_BxQxO)}, a
      meta-batch of B tasks. Adaptation uses the support set; the query loss
      is only reported.
    batching, task_chunk: how the tasks are batched (`metajax.batching`).
    inner_batch: support rows per inner step (0: all); see `inner_loop`.
    adam_carry: {"count", "nu"}: the inner Adam's carried state (module doc).
  """

  def one_task(task):
    out = inner_loop(loss_fn, params, task["support"], steps=steps, lr=lr,
                     first_order=True, optimizer=optimizer, unroll=unroll,
                     inner_batch=inner_batch, adam_carry=adam_carry)
    phi = out[0]
    nu = () if adam_carry is None else out[2]["nu"]
    return phi, loss_fn(phi, task["query"]), nu

  mean_phi, query_loss, mean_nu = task_mean(one_task, tasks, strategy=batching,
                                            chunk=task_chunk)
  pseudo = jax.tree.map(jnp.subtract, params, mean_phi)
  if adam_carry is None:
    return pseudo, query_loss
  return pseudo, query_loss, {"count": adam_carry["count"] + steps, "nu": mean_nu}
