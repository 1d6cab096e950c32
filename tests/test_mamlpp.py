"""MAML++'s switches, each checked to change exactly what it claims.

Independent truths: losses written out step by step with separate inner loops,
finite differences, first- and second-order MAML computed without the
schedule, a conv-4 whose per-step BN sets are all equal (= transductive BN),
the cosine formula.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from metajax import config as config_lib
from metajax import algorithms, mamlpp
from metajax.algorithms import Algorithm, meta_gradient
from metajax.inner import adapt, inner_loop
from metajax.maml import maml_loss
from metajax.step import init_state, make_meta_step, make_outer_optimizer
from metajax.tasks.fewshot import Problem, synthetic_tasks
from helpers import central_fd_grad, random_task, tanh_mlp_loss, tanh_mlp_params


def _tasks(key, n, dtype=jnp.float64):
  tasks = [random_task(k, dim=1, dtype=dtype) for k in jax.random.split(key, n)]
  return jax.tree.map(lambda *xs: jnp.stack(xs), *tasks)


# ------------------------------------------------------------------ MSL
def test_msl_weights_follow_the_paper():
  t = 5
  np.testing.assert_allclose(mamlpp.msl_weights(0, t, 1000), np.full(t, 0.2), rtol=1e-6)
  # Half way: non-final weights (1 - 0.5) / 5, the last 1/5 + 0.5 * 4/5.
  np.testing.assert_allclose(mamlpp.msl_weights(500, t, 1000),
                             [0.1, 0.1, 0.1, 0.1, 0.6], rtol=1e-6)
  # At (and after) the end: the floor 0.03/T, the rest on the last step.
  for step in (1000, 5000):
    np.testing.assert_allclose(mamlpp.msl_weights(step, t, 1000),
                               [0.006] * 4 + [1 - 4 * 0.006], rtol=1e-5)
  for step in range(0, 1200, 37):
    w = np.asarray(mamlpp.msl_weights(step, t, 1000))
    assert abs(w.sum() - 1) < 1e-6 and np.all(w > 0)
  np.testing.assert_allclose(mamlpp.msl_weights(7, 1, 100), [1.0])


def test_phases():
  assert mamlpp.phases(0, 0) == [(0, False, False)]
  assert mamlpp.phases(100, 0) == [(0, False, True), (100, False, False)]
  assert mamlpp.phases(100, 300) == [(0, True, True), (100, True, False),
                                     (300, False, False)]
  starts = [0, 100, 300]
  assert [int(mamlpp.phase_index(s, starts)) for s in (0, 99, 100, 299, 300, 10**6)] == \
      [0, 0, 1, 1, 2, 2]


class MultiStepLossTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_msl_is_the_weighted_sum_of_each_steps_query_loss(self):
    with jax.enable_x64(True):
      params = tanh_mlp_params(jax.random.PRNGKey(0), sizes=(1, 4, 1))
      task = random_task(jax.random.PRNGKey(1))
      steps, lr = 3, 0.1
      w_T = jnp.asarray([0.2, 0.3, 0.5])
      got = self.variant(jax.value_and_grad(lambda p: maml_loss(
          tanh_mlp_loss, p, task, steps=steps, lr=lr, step_weights=w_T)))(params)
      # Written out: the query loss after t steps, each from its own inner loop.
      want = jax.jit(jax.value_and_grad(lambda p: sum(
          w_T[t - 1] * tanh_mlp_loss(adapt(tanh_mlp_loss, p, task["support"], steps=t,
                                           lr=lr, unroll=True), task["query"])
          for t in range(1, steps + 1))))(params)
      chex.assert_trees_all_close(got, want, rtol=1e-10, atol=1e-14)


def _weights(step, steps, msl_steps):
  """MSL's weights before msl_steps; after it, the last step's loss alone."""
  if step >= msl_steps:
    return jnp.asarray([0.0] * (steps - 1) + [1.0])
  return mamlpp.msl_weights(step, steps, msl_steps)


def _hand_msl(params, tasks, w_T, lr, first_order):
  """(mean loss, its gradient) of the weighted per-step query losses, with the
  inner loop written out as plain SGD; first order stops each inner gradient."""
  def per_task(p, task):
    phi, total = p, 0.0
    for t in range(len(w_T)):
      g = jax.grad(tanh_mlp_loss)(phi, task["support"])
      if first_order:
        g = jax.lax.stop_gradient(g)
      phi = jax.tree.map(lambda a, b: a - lr * b, phi, g)
      total = total + w_T[t] * tanh_mlp_loss(phi, task["query"])
    return total
  return jax.value_and_grad(
      lambda p: jnp.mean(jnp.stack([per_task(p, jax.tree.map(lambda x: x[i], tasks))
                                    for i in range(2)])))(params)


def test_meta_gradient_uses_msl_only_before_msl_steps():
  with jax.enable_x64(True):
    params = tanh_mlp_params(jax.random.PRNGKey(2), sizes=(1, 4, 1))
    tasks = _tasks(jax.random.PRNGKey(3), 2)
    mp = {"params": params, "inner_lr": None}
    algo = Algorithm(name="mamlpp", steps=3, inner_lr=0.1, msl_steps=100)
    grad = jax.jit(lambda s: meta_gradient(algo, tanh_mlp_loss, mp, tasks, s))
    want = lambda w_T: _hand_msl(params, tasks, w_T, 0.1, first_order=False)

    for step in (0, 60, 100):  # the loss and the whole meta-gradient, each phase
      loss, grads = grad(step)
      want_loss, want_grads = want(_weights(step, 3, 100))
      np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
      chex.assert_trees_all_close(grads["params"], want_grads, rtol=1e-10, atol=1e-14)
    # From msl_steps on: the last step's loss only, which is plain MAML.
    plain = Algorithm(name="maml", steps=3, inner_lr=0.1)
    chex.assert_trees_all_close(grad(100), meta_gradient(plain, tanh_mlp_loss, mp, tasks),
                                rtol=1e-12)
    assert not np.allclose(grad(0)[0], grad(100)[0])


def test_msl_and_first_order_phases_together():
  """msl_steps=100, first_order_steps=50: first-order MSL, second-order MSL, then
  second-order MAML on the last step's loss."""
  with jax.enable_x64(True):
    params = tanh_mlp_params(jax.random.PRNGKey(6), sizes=(1, 4, 1))
    tasks = _tasks(jax.random.PRNGKey(7), 2)
    mp = {"params": params, "inner_lr": None}
    algo = Algorithm(name="mamlpp", steps=3, inner_lr=0.3, msl_steps=100,
                     first_order_steps=50)
    grad = jax.jit(lambda s: meta_gradient(algo, tanh_mlp_loss, mp, tasks, s))
    flat = lambda g: ravel_pytree(g)[0]
    for step, first_order in ((20, True), (60, False), (150, False)):
      loss, grads = grad(step)
      want_loss, want_grads = _hand_msl(params, tasks, _weights(step, 3, 100), 0.3,
                                        first_order)
      np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
      np.testing.assert_allclose(flat(grads["params"]), flat(want_grads), rtol=1e-10,
                                 atol=1e-14)
      # ... and not the other order's gradient, which differs by more than rounding.
      _, other = _hand_msl(params, tasks, _weights(step, 3, 100), 0.3, not first_order)
      assert np.max(np.abs(flat(grads["params"]) - flat(other))) > 1e-4


# ------------------------------------------------------------------ DA
class DerivativeOrderTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_first_order_before_the_switch_second_order_after(self):
    with jax.enable_x64(True):
      params = tanh_mlp_params(jax.random.PRNGKey(4), sizes=(1, 4, 1))
      tasks = _tasks(jax.random.PRNGKey(5), 2)
      mp = {"params": params, "inner_lr": None}
      algo = Algorithm(name="mamlpp", steps=2, inner_lr=0.5, first_order_steps=50)
      grad = self.variant(lambda s: meta_gradient(algo, tanh_mlp_loss, mp, tasks, s)[1])
      first = meta_gradient(Algorithm.named("fomaml", steps=2, inner_lr=0.5),
                            tanh_mlp_loss, mp, tasks)[1]
      second = meta_gradient(Algorithm.named("maml", steps=2, inner_lr=0.5),
                             tanh_mlp_loss, mp, tasks)[1]
      flat = lambda g: ravel_pytree(g["params"])[0]
      assert np.max(np.abs(flat(first) - flat(second))) > 1e-3  # they do differ
      np.testing.assert_allclose(flat(grad(49)), flat(first), rtol=1e-12)
      np.testing.assert_allclose(flat(grad(50)), flat(second), rtol=1e-12)

  def test_schedule_needs_the_step(self):
    algo = Algorithm(name="mamlpp", steps=1, inner_lr=0.1, first_order_steps=5)
    params = tanh_mlp_params(jax.random.PRNGKey(0), dtype=jnp.float32)
    with pytest.raises(ValueError, match="pass step="):
      meta_gradient(algo, tanh_mlp_loss, {"params": params, "inner_lr": None},
                    _tasks(jax.random.PRNGKey(1), 2, jnp.float32))


# ------------------------------------------------------------------ LSLR
class PerStepRatesTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_each_leaf_and_step_uses_its_own_rate(self):
    with jax.enable_x64(True):
      params = tanh_mlp_params(jax.random.PRNGKey(6))
      task = random_task(jax.random.PRNGKey(7))
      steps = 3
      leaves, treedef = jax.tree.flatten(params)
      rates = jax.tree.unflatten(treedef, [
          jnp.asarray([0.05, 0.1, 0.2]) * (i + 1) for i in range(len(leaves))])
      got = self.variant(lambda p, r: adapt(tanh_mlp_loss, p, task["support"],
                                            steps=steps, lr=r, lr_per_step=True))(params, rates)
      phi = params  # written out: phi <- phi - rate[leaf][t] * grad
      for t in range(steps):
        g = jax.grad(tanh_mlp_loss)(phi, task["support"])
        phi = jax.tree.map(lambda p, gg, r: p - r[t] * gg, phi, g, rates)
      chex.assert_trees_all_close(got, phi, rtol=1e-12)
      # More steps than rates: the last rate is reused.
      four = adapt(tanh_mlp_loss, params, task["support"], steps=4, lr=rates,
                   lr_per_step=True)
      g = jax.grad(tanh_mlp_loss)(phi, task["support"])
      chex.assert_trees_all_close(four, jax.tree.map(lambda p, gg, r: p - r[2] * gg,
                                                     phi, g, rates), rtol=1e-12)

  def test_a_scalar_rate_with_lr_per_step_is_a_clear_error(self):
    params = tanh_mlp_params(jax.random.PRNGKey(8), sizes=(1, 4, 1), dtype=jnp.float32)
    task = random_task(jax.random.PRNGKey(9), dtype=jnp.float32)
    with self.assertRaisesRegex(ValueError, r"lr_per_step=True needs .* leaves of shape "
                                r"\(S,\); got the scalar rate 0.1"):
      adapt(tanh_mlp_loss, params, task["support"], steps=2, lr=0.1, lr_per_step=True)

  def test_gradient_wrt_the_rates_matches_finite_differences(self):
    with jax.enable_x64(True):
      params = tanh_mlp_params(jax.random.PRNGKey(8), sizes=(1, 4, 1))
      task = random_task(jax.random.PRNGKey(9))
      rates = jax.tree.map(lambda p: jnp.asarray([0.1, 0.05]), params)
      flat, unravel = ravel_pytree(rates)
      f = lambda r: maml_loss(tanh_mlp_loss, params, task, steps=2, lr=unravel(r),
                              lr_per_step=True)
      np.testing.assert_allclose(jax.grad(f)(flat), central_fd_grad(f, flat),
                                 rtol=1e-6, atol=1e-9)

  def test_init_and_one_meta_step_learn_them(self):
    algo = Algorithm(name="mamlpp", steps=3, inner_lr=0.1, lslr=True)
    params = tanh_mlp_params(jax.random.PRNGKey(0), dtype=jnp.float32)
    config = config_lib.sinusoid_base()
    opt = make_outer_optimizer(config)
    state = init_state(algo, params, opt, jax.random.PRNGKey(1))
    for leaf in jax.tree.leaves(state.inner_lr):
      np.testing.assert_array_equal(leaf, np.full(3, 0.1, np.float32))
    sample = lambda key: _tasks(key, 2, jnp.float32)
    new, metrics = jax.jit(make_meta_step(algo, tanh_mlp_loss, sample, opt))(
        state, jax.random.PRNGKey(2))
    assert np.isfinite(metrics["loss"])
    moved = [np.abs(np.asarray(a) - 0.1).max() for a in jax.tree.leaves(new.inner_lr)]
    assert min(moved) > 0  # Adam moves every learned rate on its first step

  def test_the_meta_gradient_of_the_rates_matches_finite_differences(self):
    """Through the Algorithm path (meta_gradient, vmapped over tasks), not
    maml_loss alone: d(mean query loss)/d(rate[leaf][t])."""
    with jax.enable_x64(True):
      algo = Algorithm(name="mamlpp", steps=2, inner_lr=0.1, lslr=True)
      params = tanh_mlp_params(jax.random.PRNGKey(3), sizes=(1, 4, 1))
      tasks = _tasks(jax.random.PRNGKey(4), 3)
      rates = jax.tree.map(lambda p: jnp.asarray([0.12, 0.07]), params)
      flat, unravel = ravel_pytree(rates)
      got = meta_gradient(algo, tanh_mlp_loss, {"params": params, "inner_lr": rates},
                          tasks)[1]["inner_lr"]
      mean_loss = jax.jit(lambda r: jnp.mean(jnp.stack([
          maml_loss(tanh_mlp_loss, params, jax.tree.map(lambda x: x[i], tasks), steps=2,
                    lr=unravel(r), lr_per_step=True) for i in range(3)])))
      want = central_fd_grad(mean_loss, flat)
      assert np.abs(want).min() > 1e-6  # every rate matters
      np.testing.assert_allclose(ravel_pytree(got)[0], want, rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------ per-step BN
def _bn_problem_and_task(bn, bn_steps=1):
  shape = (16, 16, 1)
  prob = Problem(ways=3, filters=2, image_shape=shape, bn=bn, bn_steps=bn_steps,
                 conv_impl="xla")
  task = jax.tree.map(lambda a: a[0], synthetic_tasks(
      jax.random.PRNGKey(1), meta_batch=1, ways=3, shots=1, queries=2, image_shape=shape))
  return prob, task


def _is_bn(path):
  return "bn_" in jax.tree_util.keystr(path)


def test_per_step_bn_uses_step_t_parameters_at_step_t():
  prob, task = _bn_problem_and_task("per_step", 3)
  params = prob.init_params(jax.random.PRNGKey(0))
  # Distinct BN parameters per step, so using the wrong set would show.
  params = jax.tree_util.tree_map_with_path(
      lambda path, a: a + 0.3 * jnp.arange(3.0)[:, None] if _is_bn(path) else a, params)
  w = jnp.asarray([0.2, 0.3, 0.5])

  @jax.jit
  def written_out(params):  # the model's `step` argument given by hand
    msl, phi = 0.0, params
    for t in range(3):
      g = jax.grad(lambda p: prob.loss_fn(p, task["support"], step=t))(phi)
      phi = jax.tree.map(lambda p, gg: p - 0.1 * gg, phi, g)
      msl += w[t] * prob.loss_fn(phi, task["query"], step=t)
    return prob.loss_fn(phi, task["query"], step=2), msl

  got = jax.jit(lambda p: (
      maml_loss(prob.loss_fn, p, task, steps=3, lr=0.1, step_arg=True),
      maml_loss(prob.loss_fn, p, task, steps=3, lr=0.1, step_arg=True, step_weights=w)))
  np.testing.assert_allclose(got(params), written_out(params), rtol=2e-5)


def test_equal_per_step_bn_sets_are_transductive_bn():
  # With BN parameters frozen in the inner loop (MAML++'s setting), per-step
  # sets that are all equal compute exactly what one transductive set does.
  one, task = _bn_problem_and_task("transductive")
  per, _ = _bn_problem_and_task("per_step", 4)
  params = one.init_params(jax.random.PRNGKey(0))
  params = jax.tree_util.tree_map_with_path(
      lambda path, a: a + 0.2 if _is_bn(path) else a, params)
  tiled = jax.tree_util.tree_map_with_path(
      lambda path, a: jnp.tile(a, (4, 1)) if _is_bn(path) else a, params)
  mask = algorithms.batch_norm_frozen_mask(params)
  a = jax.jit(lambda p: maml_loss(one.loss_fn, p, task, steps=4, lr=0.3, mask=mask))(params)
  per_step = Algorithm(name="mamlpp", steps=4, inner_lr=0.3, per_step_bn=True)
  b = jax.jit(lambda p: maml_loss(per.loss_fn, p, task, steps=4, lr=0.3, step_arg=True,
                                  mask=algorithms.inner_mask(per_step, p)))(tiled)
  np.testing.assert_allclose(a, b, rtol=1e-5)
  assert not any(jax.tree.leaves(algorithms.inner_mask(per_step, tiled)["block_0"]["bn_scale"]))


def test_observe_gets_the_step_index():
  params = {"w": jnp.ones(2)}
  loss = lambda p, b, step: jnp.sum((p["w"] - b) ** 2) * (1.0 + step)
  _, seen = inner_loop(loss, params, jnp.zeros(2), steps=3, lr=0.01, step_arg=True,
                       observe=lambda p, step: step)
  np.testing.assert_array_equal(seen, [0, 1, 2])


# ------------------------------------------------------------------ cosine
def test_cosine_meta_lr_reaches_outer_lr_min():
  config = config_lib.sinusoid_base()
  config.outer_optimizer, config.outer_lr_schedule = "sgd", "cosine"
  config.outer_lr, config.outer_lr_min, config.num_steps = 1e-3, 1e-5, 100
  opt = make_outer_optimizer(config)
  params = {"w": jnp.zeros(())}
  state = opt.init(params)
  for step in range(101):
    updates, state = opt.update({"w": jnp.ones(())}, state, params)
    want = 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + np.cos(np.pi * min(step, 100) / 100))
    np.testing.assert_allclose(-updates["w"], want, rtol=1e-5)


# ------------------------------------------------------------------ config
@pytest.mark.parametrize("change, message", [
    (dict(algorithm="reptile", lslr=True), "MAML\\+\\+ switches need"),
    (dict(algorithm="imaml", msl_steps=10), "MAML\\+\\+ switches need"),
    (dict(algorithm="metasgd", lslr=True), "both learn the inner rates"),
    (dict(algorithm="fomaml", first_order_steps=10), "first order throughout"),
    (dict(outer_lr_min=1.0), "outer_lr_min must be"),
    (dict(msl_steps=-1), "msl_steps must be an integer >= 0"),
])
def test_bad_mamlpp_configs_are_refused(change, message):
  config = config_lib.sinusoid_base()
  config.update(change)
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(config)


def test_schedules_longer_than_the_run_are_the_first_steps_of_them():
  # A run cut short (or resumed with a smaller num_steps to test a checkpoint)
  # keeps the schedule it trained with: MSL / first order throughout.
  config = config_lib.sinusoid_base()
  config.update(dict(algorithm="mamlpp", num_steps=500, msl_steps=7500,
                     first_order_steps=600))
  config_lib.validate(config)
  from metajax.mamlpp import msl_weights, phase_index, phases
  # At the run's last step the weights are still part-way down their ramp.
  v = msl_weights(config.num_steps - 1, 5, config.msl_steps)
  np.testing.assert_allclose(v[:4], (1 - 499 / 7500) / 5, rtol=1e-6)
  # Every step of the run is in the first phase: first order, with MSL.
  table = phases(config.msl_steps, config.first_order_steps)
  starts = [start for start, _, _ in table]
  for step in range(config.num_steps):
    assert table[int(phase_index(step, starts))] == (0, True, True), step
  # The step after the first-order phase is second order (still with MSL).
  assert table[int(phase_index(600, starts))] == (600, False, True)


def test_per_step_bn_is_refused_outside_the_maml_family():
  config = config_lib.fewshot_base("omniglot")
  config.algorithm, config.bn = "protonet", "per_step"
  with pytest.raises(config_lib.ConfigError, match="bn='per_step'"):
    config_lib.validate(config)
  config.algorithm = "mamlpp"
  config_lib.validate(config)
