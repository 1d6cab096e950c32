"""iMAML: the implicit meta-gradient against a closed form and against
differentiating through many unrolled steps of the proximal inner problem."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from metajax.imaml import conjugate_gradient, imaml_task_grad
from metajax.inner import inner_loop
from helpers import random_task, tanh_mlp_loss, tanh_mlp_params
from test_episodes import synthetic_data  # noqa: F401 (fixture)


@pytest.mark.parametrize("jit", [False, True])
def test_conjugate_gradient_solves_an_spd_system(jit):
  with jax.enable_x64(True):
    rng = np.random.RandomState(0)
    m = rng.randn(6, 6)
    a = m @ m.T + 0.5 * np.eye(6)
    b = rng.randn(6)
    solve = lambda rhs, steps: conjugate_gradient(lambda v: jnp.asarray(a) @ v, rhs, steps=steps)
    if jit:
      solve = jax.jit(solve, static_argnums=1)
    np.testing.assert_allclose(solve(jnp.asarray(b), 6), np.linalg.solve(a, b), rtol=1e-8)
    np.testing.assert_array_equal(solve(jnp.zeros(6), 3), np.zeros(6))


class QuadraticTest(chex.TestCase):
  """L_support = 1/2 (phi - a)^T A (phi - a), L_query = 1/2 ||B phi - c||^2:
  phi* = (A + lam I)^-1 (A a + lam theta), d phi*/d theta = lam (A + lam I)^-1."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_implicit_gradient_equals_the_closed_form(self):
    with jax.enable_x64(True):
      rng = np.random.RandomState(1)
      d, lam = 4, 1.5
      m = rng.randn(d, d)
      A = m @ m.T / d + 0.5 * np.eye(d)
      a, B, c, theta = rng.randn(d), rng.randn(3, d), rng.randn(3), rng.randn(d)
      support_loss = lambda p, batch: 0.5 * (p["w"] - batch) @ jnp.asarray(A) @ (p["w"] - batch)
      query_loss = lambda p, batch: 0.5 * jnp.sum((jnp.asarray(B) @ p["w"] - batch) ** 2)
      # One loss_fn for both sets: the batch says which.
      loss_fn = lambda p, batch: (query_loss(p, batch[0][:3]) if batch[1]
                                  else support_loss(p, batch[0]))
      task = {"support": (jnp.asarray(a), False),
              "query": (jnp.concatenate([jnp.asarray(c), jnp.zeros(d - 3)]), True)}
      grad_fn = self.variant(lambda th: imaml_task_grad(
          loss_fn, {"w": th}, task, steps=3000, lr=0.05, lam=lam, cg_steps=d))
      loss, grad = grad_fn(jnp.asarray(theta))
      phi_star = np.linalg.solve(A + lam * np.eye(d), A @ a + lam * theta)
      expected = lam * np.linalg.solve(A + lam * np.eye(d), B.T @ (B @ phi_star - c))
      np.testing.assert_allclose(loss, 0.5 * np.sum((B @ phi_star - c) ** 2), rtol=1e-9)
      np.testing.assert_allclose(grad["w"], expected, rtol=1e-8)
      # Damped: CG solves ((1 + 0.5) I + A / (lam + 10)) g = grad L_query(phi*).
      _, damped = self.variant(lambda th: imaml_task_grad(
          loss_fn, {"w": th}, task, steps=3000, lr=0.05, lam=lam, cg_steps=d,
          cg_damping=0.5, cg_lam_damping=10.0))(jnp.asarray(theta))
      np.testing.assert_allclose(damped["w"], np.linalg.solve(
          1.5 * np.eye(d) + A / (lam + 10.0), B.T @ (B @ phi_star - c)), rtol=1e-8)


  @chex.variants(with_jit=True, without_jit=True)
  def test_gd_then_pull_follows_the_authors_inner_loop(self):
    # inner="gd_then_pull": k plain GD steps on L_support from theta, whose
    # closed form is phi_k = a + (I - lr A)^k (theta - a), then one step of lr
    # on (lam/2)||phi - theta||^2; CG then solves the damped system at phi.
    with jax.enable_x64(True):
      rng = np.random.RandomState(4)
      d, lam, lr, k = 4, 2.0, 0.1, 7
      m = rng.randn(d, d)
      A = m @ m.T / d + 0.5 * np.eye(d)
      a, B, c, theta = rng.randn(d), rng.randn(3, d), rng.randn(3), rng.randn(d)
      loss_fn = lambda p, batch: (
          0.5 * jnp.sum((jnp.asarray(B) @ p["w"] - batch[0][:3]) ** 2) if batch[1]
          else 0.5 * (p["w"] - batch[0]) @ jnp.asarray(A) @ (p["w"] - batch[0]))
      task = {"support": (jnp.asarray(a), False),
              "query": (jnp.concatenate([jnp.asarray(c), jnp.zeros(d - 3)]), True)}
      loss, grad = self.variant(lambda th: imaml_task_grad(
          loss_fn, {"w": th}, task, steps=k, lr=lr, lam=lam, cg_steps=d, cg_damping=1.0,
          cg_lam_damping=10.0, inner="gd_then_pull"))(jnp.asarray(theta))
      phi_k = a + np.linalg.matrix_power(np.eye(d) - lr * A, k) @ (theta - a)
      phi = phi_k - lr * lam * (phi_k - theta)
      np.testing.assert_allclose(loss, 0.5 * np.sum((B @ phi - c) ** 2), rtol=1e-10)
      np.testing.assert_allclose(grad["w"], np.linalg.solve(
          2.0 * np.eye(d) + A / (lam + 10.0), B.T @ (B @ phi - c)), rtol=1e-8)
    with pytest.raises(ValueError, match="inner must be one of"):
      imaml_task_grad(loss_fn, {"w": jnp.zeros(d)}, task, steps=1, lr=lr, lam=lam,
                      cg_steps=1, inner="newton")


def test_converges_to_the_unrolled_gradient_of_the_proximal_solution():
  """On a tanh MLP: differentiating through 400 unrolled inner steps (theta in
  the start point and in the proximal term) gives d L_query(phi*) / d theta;
  iMAML's CG estimate approaches it as cg_steps grows."""
  with jax.enable_x64(True):
    params = tanh_mlp_params(jax.random.PRNGKey(0), sizes=(1, 6, 1))
    task = random_task(jax.random.PRNGKey(1), n_support=8, n_query=9)
    lam, lr, steps = 2.0, 0.1, 400

    def unrolled(theta):
      prox = lambda phi, batch: tanh_mlp_loss(phi, batch) + 0.5 * lam * sum(
          jnp.sum((x - t) ** 2) for x, t in zip(jax.tree.leaves(phi), jax.tree.leaves(theta)))
      phi, _ = inner_loop(prox, theta, task["support"], steps=steps, lr=lr)
      return tanh_mlp_loss(phi, task["query"])

    exact = ravel_pytree(jax.grad(unrolled)(params))[0]
    errors = []
    for cg_steps in (1, 3, 10, 30):
      _, g = jax.jit(lambda p, n=cg_steps: imaml_task_grad(
          tanh_mlp_loss, p, task, steps=steps, lr=lr, lam=lam, cg_steps=n))(params)
      errors.append(float(np.linalg.norm(ravel_pytree(g)[0] - exact)
                          / np.linalg.norm(exact)))
    assert errors[-1] < 1e-6, errors
    assert errors[0] > 100 * errors[-1], errors
    assert all(e1 >= e2 * 0.999 for e1, e2 in zip(errors, errors[1:])), errors


def test_meta_gradient_takes_the_configured_inner_loop():
  # The vmapped meta-gradient of an Algorithm built from config keys equals
  # the mean of per-task imaml_task_grad calls in a Python loop with the same
  # inner loop, and the two inner loops give different meta-gradients.
  from metajax.algorithms import Algorithm, meta_gradient
  with jax.enable_x64(True):
    params = tanh_mlp_params(jax.random.PRNGKey(5))
    tasks = [random_task(jax.random.PRNGKey(6 + i)) for i in range(3)]
    batch = jax.tree.map(lambda *a: jnp.stack(a), *tasks)
    got = {}
    for inner in ("proximal", "gd_then_pull"):
      algo = Algorithm.named("imaml", steps=4, inner_lr=0.1, lam=2.0, cg_steps=3,
                             cg_damping=1.0, imaml_inner=inner)
      _, grads = meta_gradient(algo, tanh_mlp_loss, {"params": params, "inner_lr": None}, batch)
      loop = [ravel_pytree(imaml_task_grad(tanh_mlp_loss, params, t, steps=4, lr=0.1, lam=2.0,
                                           cg_steps=3, cg_damping=1.0, inner=inner)[1])[0]
              for t in tasks]
      got[inner] = ravel_pytree(grads["params"])[0]
      np.testing.assert_allclose(got[inner], np.mean(loop, axis=0), rtol=1e-10)
    assert np.linalg.norm(got["proximal"] - got["gd_then_pull"]) > 1e-3 * np.linalg.norm(
        got["proximal"])


def test_damping_shrinks_the_gradient_toward_zero():
  task = random_task(jax.random.PRNGKey(2), dtype=jnp.float32)
  params = tanh_mlp_params(jax.random.PRNGKey(3), dtype=jnp.float32)
  norms = [float(np.linalg.norm(ravel_pytree(imaml_task_grad(
      tanh_mlp_loss, params, task, steps=5, lr=0.1, lam=1.0, cg_steps=10,
      cg_damping=damping)[1])[0])) for damping in (0.0, 1.0, 100.0)]
  assert norms[0] > norms[1] > norms[2] > 0, norms


def test_test_time_lambda_zero_adapts_by_plain_gradient_descent():
  # Test-time adaptation (metajax.evaluate) against hand-written GD loops on
  # the plain support loss (imaml_eval_lam=0, the authors' test) and on the
  # proximal objective with the training lambda (imaml_eval_lam < 0).
  from metajax.algorithms import Algorithm
  from metajax.config import ConfigError, sinusoid_base, validate
  from metajax.evaluate import adaptation_losses
  with jax.enable_x64(True):
    theta = tanh_mlp_params(jax.random.PRNGKey(0))
    task = random_task(jax.random.PRNGKey(1))
    tasks = jax.tree.map(lambda a: a[None], task)
    lam, lr, steps = 3.0, 0.05, 4

    def gd_query_losses(prox):
      phi, out = theta, [tanh_mlp_loss(theta, task["query"])]
      for _ in range(steps):
        loss = lambda p: tanh_mlp_loss(p, task["support"]) + prox * 0.5 * sum(
            jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(theta)))
        phi = jax.tree.map(lambda p, g: p - lr * g, phi, jax.grad(loss)(phi))
        out.append(tanh_mlp_loss(phi, task["query"]))
      return np.array(out)

    for eval_lam, prox in ((0.0, 0.0), (-1.0, lam), (1.5, 1.5)):
      algo = Algorithm.named("imaml", steps=1, inner_lr=lr, lam=lam, eval_lam=eval_lam)
      got = adaptation_losses(algo, tanh_mlp_loss, {"params": theta, "inner_lr": None},
                              tasks, steps=steps)[0]
      np.testing.assert_allclose(got, gd_query_losses(prox), rtol=1e-10, err_msg=str(eval_lam))
  c = sinusoid_base()
  c.imaml_eval_lam = float("nan")
  with pytest.raises(ConfigError, match="imaml_eval_lam must be a finite number"):
    validate(c)


def test_imaml_on_images_records_both_lambdas(tmp_path, synthetic_data):  # noqa: F811
  # The image path end to end (conv-4, the authors' inner loop, implicit
  # gradient, test adaptation by plain GD); eval.json says which lambda each
  # phase adapted with.
  import json
  from metajax.train import train_and_evaluate
  from test_episodes import tiny_fewshot
  r = train_and_evaluate(tiny_fewshot(algorithm="imaml", inner_steps=2, inner_lr=0.1,
                                      imaml_lam=2.0, imaml_eval_lam=0.0, cg_steps=2,
                                      imaml_inner="gd_then_pull", num_steps=40,
                                      eval_every=20, conv_impl="xla"),
                         str(tmp_path), progress=False)
  saved = json.load(open(tmp_path / "eval.json"))
  assert (saved["imaml_lam"], saved["imaml_eval_lam"], saved["imaml_inner"]) == (
      2.0, 0.0, "gd_then_pull")
  assert r["steps"] == [0, 1, 2, 3] and np.all(np.isfinite(r["accuracy"]))
