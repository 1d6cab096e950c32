"""iMAML (Rajeswaran et al. 2019): implicit meta-gradients of a proximal inner problem.

Each task adapts to an approximate solution of

  phi*(theta) = argmin_phi  L_support(phi) + (lam / 2) ||phi - theta||^2

by `steps` gradient steps from phi = theta (the shared inner loop,
`metajax.inner`, on the proximal loss; nothing is differentiated through it).
`inner="gd_then_pull"` is the authors' Omniglot code instead: `steps` plain
steps on L_support, then one step of the same rate on the proximal term
alone, phi <- phi - lr * lam * (phi - theta).
At the solution, the implicit function theorem gives

  d phi* / d theta = (I + H / lam)^-1,   H = hessian of L_support at phi*,

so the meta-gradient of L_query(phi*) is g = (I + H / lam)^-1 grad L_query(phi*),
found by `cg_steps` of conjugate gradient on

  ((1 + cg_damping) I + H / (lam + cg_lam_damping)) g = grad L_query(phi*)

(both dampings 0 give the exact system; the iMAML authors' Omniglot code uses
cg_damping = 1 and adds 10 to lam inside CG only) with Hessian-vector
products `jax.jvp` of `jax.grad` (never forming H). Memory is that of one
inner step and of the CG vectors, whatever `steps` is.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from metajax.config import IMAML_INNER
from metajax.inner import LossFn, PyTree, inner_loop


def conjugate_gradient(matvec, b, steps: int, tol: float | None = None):
  """x ~= A^-1 b for symmetric positive definite A, by at most `steps` CG
  iterations from x = 0.

  Iterations stop early (x is kept) once ||r|| <= tol * ||b||; the default tol
  is 10 float epsilons of b's dtype. Past that point the updates are rounding
  noise, which CG would amplify.

  Args:
    matvec: x_D -> A x_D (flat vectors).
    b: b_D.
  """
  tol = 10 * float(jnp.finfo(b.dtype).eps) if tol is None else tol
  stop_rr = jnp.square(tol) * jnp.vdot(b, b)

  def body(carry, _):
    x, r, p, rr = carry
    Ap = matvec(p)
    alpha = rr / jnp.vdot(p, Ap)
    x, r = x + alpha * p, r - alpha * Ap
    rr_new = jnp.vdot(r, r)
    p = r + (rr_new / rr) * p
    return (x, r, p, rr_new)

  def step(carry, _):
    done = carry[3] <= stop_rr
    # Both branches are computed under vmap; `where` keeps the finished state.
    new = body(carry, None)
    return jax.tree.map(lambda n, o: jnp.where(done, o, n), new, carry), None

  x0 = jnp.zeros_like(b)
  (x, _, _, _), _ = jax.lax.scan(step, (x0, b, b, jnp.vdot(b, b)), None, length=steps)
  return x


def proximal_loss(loss_fn: LossFn, theta: PyTree, lam: float) -> LossFn:
  """phi, batch -> loss_fn(phi, batch) + (lam / 2) ||phi - theta||^2 (theta held fixed)."""
  theta = jax.lax.stop_gradient(theta)

  def loss(phi, batch):
    sq = sum(jnp.sum(jnp.square(p - t))
             for p, t in zip(jax.tree.leaves(phi), jax.tree.leaves(theta)))
    return loss_fn(phi, batch) + 0.5 * lam * sq

  return loss


def imaml_task_grad(loss_fn: LossFn, params: PyTree, task: dict, *, steps: int,
                    lr: float, lam: float, cg_steps: int, cg_damping: float = 0.0,
                    cg_lam_damping: float = 0.0, optimizer: str = "sgd",
                    inner: str = "proximal") -> tuple[jax.Array, PyTree]:
  """(query loss at phi*, implicit meta-gradient w.r.t. theta) for one task.

  Args:
    task: {"support": batch, "query": batch} as in `metajax.maml_loss`.
    steps, lr, optimizer: the inner solver of the proximal problem.
    lam: the proximal strength lambda (> 0).
    cg_steps, cg_damping, cg_lam_damping: conjugate-gradient iterations and
      the two dampings of its matrix (module docstring).
    inner: "proximal" (every step on the proximal loss) or "gd_then_pull"
      (plain steps on the support loss, then one pull toward theta).
  """
  if inner not in IMAML_INNER:
    raise ValueError(f"inner must be one of {IMAML_INNER}, got {inner!r}")
  theta = jax.lax.stop_gradient(params)
  objective = proximal_loss(loss_fn, theta, lam) if inner == "proximal" else loss_fn
  phi, _ = inner_loop(objective, theta, task["support"], steps=steps, lr=lr,
                      first_order=True, optimizer=optimizer)
  if inner == "gd_then_pull":
    # One step of lr on (lam / 2)||phi - theta||^2 (authors' "pull back"): it
    # shrinks phi - theta by the factor 1 - lr * lam.
    phi = jax.tree.map(lambda p, t: p - lr * lam * (p - t), phi, theta)
  phi = jax.lax.stop_gradient(phi)
  query_loss, query_grad = jax.value_and_grad(loss_fn)(phi, task["query"])

  flat_phi, unravel = ravel_pytree(phi)
  support_grad = lambda v: ravel_pytree(
      jax.grad(loss_fn)(unravel(v), task["support"]))[0]

  def matvec(v):
    hvp = jax.jvp(support_grad, (flat_phi,), (v,))[1]
    return (1.0 + cg_damping) * v + hvp / (lam + cg_lam_damping)

  g = conjugate_gradient(matvec, ravel_pytree(query_grad)[0], cg_steps)
  return query_loss, unravel(g)
