"""Reptile (Nichol et al. 2018) as a pseudo-gradient.

  theta <- theta + epsilon * (mean_i phi_i - theta)

is one step of gradient descent with step size epsilon on the pseudo-gradient
g = theta - mean_i phi_i, so any optax optimiser can apply it (plain SGD with
learning rate epsilon gives the paper's update exactly). phi_i is task i's
adapted parameters from the shared inner loop (`metajax.adapt`), with SGD or
Adam (beta1 = 0, as in the paper) as inner optimiser. Nothing is
differentiated through the inner loop.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from metajax.batching import task_mean
from metajax.inner import LossFn, PyTree, adapt


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
) -> tuple[PyTree, jax.Array]:
  """Returns (theta - mean_i phi_i, mean query loss after adaptation).

  Args:
    tasks: {"support": (x_BxKxD, y_BxKxO), "query": (x_BxQxD, y_BxQxO)}, a
      meta-batch of B tasks. Adaptation uses the support set; the query loss
      is only reported.
    batching, task_chunk: how the tasks are batched (`metajax.batching`).
    inner_batch: support rows per inner step (0: all); see `inner_loop`.
  """

  def one_task(task):
    phi = adapt(loss_fn, params, task["support"], steps=steps, lr=lr,
                first_order=True, optimizer=optimizer, unroll=unroll,
                inner_batch=inner_batch)
    return phi, loss_fn(phi, task["query"])

  mean_phi, query_loss = task_mean(one_task, tasks, strategy=batching,
                                   chunk=task_chunk)
  return jax.tree.map(jnp.subtract, params, mean_phi), query_loss
