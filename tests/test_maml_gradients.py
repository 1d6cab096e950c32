"""The MAML meta-gradient against independent truths (float64)."""

import chex
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.flatten_util import ravel_pytree

import metajax
from metajax import tn_product
from helpers import (central_fd_grad, linear_loss, random_task, tanh_mlp_loss,
                     tanh_mlp_params)


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("unroll", [False, True])
def test_second_order_grad_matches_finite_differences(steps, unroll):
  with jax.enable_x64(True):
    params = tanh_mlp_params(jax.random.PRNGKey(0))
    task = random_task(jax.random.PRNGKey(1))
    flat, unravel = ravel_pytree(params)
    loss = lambda p: metajax.maml_loss(tanh_mlp_loss, p, task, steps=steps,
                                       lr=0.3, unroll=unroll)
    grad = ravel_pytree(jax.grad(loss)(params))[0]
    fd = central_fd_grad(jax.jit(lambda v: loss(unravel(v))), flat)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)
    # The first-order gradient is a different quantity: the test would notice.
    fo = ravel_pytree(jax.grad(lambda p: metajax.maml_loss(
        tanh_mlp_loss, p, task, steps=steps, lr=0.3, first_order=True))(params))[0]
    assert np.max(np.abs(fo - fd)) > 1e-4


def _linear_closed_form(w, task, alpha):
  """One inner step of a linear model with loss (1/n)||Xw - y||^2, by hand.

  grad L(w) = A w - b with A = 2 X^T X / n, b = 2 X^T y / n, so
  w' = (I - alpha A_s) w + alpha b_s and the MAML gradient is
  (I - alpha A_s)^T (A_q w' - b_q); first-order MAML drops -alpha A_s (...).
  """
  Xs, ys = (np.asarray(a) for a in task["support"])
  Xq, yq = (np.asarray(a) for a in task["query"])
  A_s, b_s = 2 * Xs.T @ Xs / len(Xs), 2 * Xs.T @ ys / len(Xs)
  A_q, b_q = 2 * Xq.T @ Xq / len(Xq), 2 * Xq.T @ yq / len(Xq)
  w = np.asarray(w)
  w_adapted = (np.eye(len(w)) - alpha * A_s) @ w + alpha * b_s
  g_query = A_q @ w_adapted - b_q
  return (np.eye(len(w)) - alpha * A_s).T @ g_query, g_query


class LinearClosedFormTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(False, True)
  def test_matches_closed_form(self, first_order):
    with jax.enable_x64(True):
      task = random_task(jax.random.PRNGKey(2), n_support=5, n_query=9, dim=4)
      w = jax.random.normal(jax.random.PRNGKey(3), (4, 1), jnp.float64)
      alpha = 0.07
      grad_fn = self.variant(jax.grad(lambda w: metajax.maml_loss(
          linear_loss, w, task, steps=1, lr=alpha, first_order=first_order)))
      second, first = _linear_closed_form(w, task, alpha)
      expected = first if first_order else second
      np.testing.assert_allclose(grad_fn(w), expected, rtol=1e-10, atol=1e-12)
      # The Hessian term is not negligible here, so the two truths differ.
      assert np.max(np.abs(second - first)) > 1e-3

  @chex.variants(with_jit=True, without_jit=True)
  def test_adapt_is_sgd(self):
    with jax.enable_x64(True):
      task = random_task(jax.random.PRNGKey(4), dim=3)
      w = jnp.ones((3, 1), jnp.float64)
      adapted = self.variant(lambda w: metajax.adapt(
          linear_loss, w, task["support"], steps=2, lr=0.1))(w)
      X, y = (np.asarray(a) for a in task["support"])
      expected = np.asarray(w)
      for _ in range(2):
        expected = expected - 0.1 * (2 * X.T @ (X @ expected - y) / len(X))
      np.testing.assert_allclose(adapted, expected, rtol=1e-12)


def test_zero_steps_is_plain_loss():
  task = random_task(jax.random.PRNGKey(5), dtype=jnp.float32)
  params = tanh_mlp_params(jax.random.PRNGKey(6), dtype=jnp.float32)
  np.testing.assert_allclose(
      metajax.maml_loss(tanh_mlp_loss, params, task, steps=0, lr=0.1),
      tanh_mlp_loss(params, task["query"]), rtol=1e-6)


@pytest.mark.parametrize("remat", [True, "full", "dots", "auto"])
def test_remat_gives_the_finite_difference_gradient(remat):
  with jax.enable_x64(True):
    params = tanh_mlp_params(jax.random.PRNGKey(7))
    task = random_task(jax.random.PRNGKey(8))
    flat, unravel = ravel_pytree(params)
    loss = lambda p, r: metajax.maml_loss(tanh_mlp_loss, p, task, steps=3, lr=0.2, remat=r)
    grad = ravel_pytree(jax.grad(loss)(params, remat))[0]
    fd = central_fd_grad(jax.jit(lambda v: loss(unravel(v), False)), flat)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)
    # And the same numbers as keeping everything, to rounding.
    plain = ravel_pytree(jax.grad(loss)(params, False))[0]
    np.testing.assert_allclose(grad, plain, rtol=1e-12)


def _remat_policies(fn, *args):
  """The policy of every jax.checkpoint in fn's program (None: save nothing)."""
  found = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if "policy" in eqn.params and "prevent_cse" in eqn.params:  # a checkpoint
        found.append(eqn.params["policy"])
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        walk(sub)

  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return found


AUTO = "dots" if jax.default_backend() == "cpu" else None  # "auto" off CPU: "off"


@pytest.mark.parametrize("remat,first_order,steps,unroll,msl,policies", [
    (False, False, 3, False, False, []), ("off", False, 3, False, False, []),
    (True, False, 3, False, False, [None]),
    ("full", True, 3, False, False, [None]),  # asked for by name: taken even at first order
    ("dots", False, 3, False, False, ["dots"]),
    ("dots", False, 3, True, False, ["dots"] * 3),  # one per step
    ("auto", False, 3, False, False, [AUTO] if AUTO else []),
    ("auto", False, 1, False, False, []), ("auto", True, 3, False, False, []),
    ("auto", False, 3, False, True, []),  # MAML++'s multi-step loss: "off"
    ("dots", False, 3, False, True, ["dots"])])
def test_each_remat_mode_puts_its_checkpoint_around_each_inner_step(remat, first_order, steps,
                                                                     unroll, msl, policies):
  params = tanh_mlp_params(jax.random.PRNGKey(7))
  task = random_task(jax.random.PRNGKey(8))
  weights = jnp.full((steps,), 1.0 / steps) if msl else None
  found = _remat_policies(lambda p: metajax.maml_loss(
      tanh_mlp_loss, p, task, steps=steps, lr=0.2, first_order=first_order, remat=remat,
      unroll=unroll, step_weights=weights), params)
  dots = tn_product.dots_saveable   # XLA's dots and metajax's two products
  assert ["dots" if p == dots else p for p in found] == policies


def test_remat_modes_keep_fewer_residuals_in_that_order():
  # What the meta-gradient's backward pass keeps: everything (off), the matrix
  # products' outputs (dots), or each step's inputs (full).
  # (The arrays jax.vjp's backward function holds on to.)
  params = tanh_mlp_params(jax.random.PRNGKey(7))
  task = random_task(jax.random.PRNGKey(8))
  kept = {}
  for remat in ("off", "dots", "full"):
    _, backward = jax.vjp(lambda p: metajax.maml_loss(
        tanh_mlp_loss, p, task, steps=3, lr=0.2, remat=remat), params)
    kept[remat] = sum(int(np.prod(np.shape(a))) for a in jax.tree.leaves(backward))
  assert kept["off"] > kept["dots"] > kept["full"], kept


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="'auto' is 'dots' on CPU only")
def test_an_algorithms_remat_mode_names_each_phase_that_differs():
  from metajax.algorithms import Algorithm
  mode = lambda name, **kw: Algorithm.named(name, steps=5, inner_lr=0.1, remat="auto",
                                            **kw).remat_mode
  assert mode("maml") == mode("metasgd") == mode("mamlpp") == "dots"
  assert mode("fomaml") == mode("reptile") == mode("imaml") == "off"
  # MAML++: first order, then the multi-step loss ("off" both), then the last-step loss.
  assert mode("mamlpp", msl_steps=150, first_order_steps=50) == "off then dots"
  assert Algorithm.named("mamlpp", steps=5, inner_lr=0.1, remat="full",
                         first_order_steps=50).remat_mode == "full"


def test_remat_auto_is_dots_for_second_order_through_steps_on_cpu_only():
  from metajax.inner import remat_mode
  assert remat_mode("auto", first_order=False, steps=5, backend="cpu") == "dots"
  assert remat_mode("auto", first_order=False, steps=5, backend="gpu") == "off"
  assert remat_mode("auto", first_order=False, steps=1, backend="cpu") == "off"
  assert remat_mode("auto", first_order=True, steps=5, backend="cpu") == "off"
  assert remat_mode("auto", first_order=False, steps=5, observes=True, backend="cpu") == "off"
  assert remat_mode(True, first_order=True, steps=1) == "full"
  with pytest.raises(ValueError, match=r"remat must be one of \('off', 'dots', 'full'\), "
                                       r"'auto', True or False; got 'yes'"):
    remat_mode("yes", first_order=False, steps=2)


def test_negative_steps_is_an_error():
  with pytest.raises(ValueError, match="-1"):
    metajax.adapt(linear_loss, jnp.ones((2, 1)), (jnp.ones((3, 2)), jnp.ones((3, 1))),
                  steps=-1, lr=0.1)
