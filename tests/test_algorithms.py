"""Reptile, Meta-SGD, ANIL and the vmapped meta-batch against independent truths."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import metajax
from metajax.algorithms import Algorithm, head_mask, meta_gradient
from helpers import (central_fd_grad, linear_loss, random_task, tanh_mlp_loss,
                     tanh_mlp_params)


def _task_batch(key, n_tasks, **kw):
  tasks = [random_task(k, **kw) for k in jax.random.split(key, n_tasks)]
  return tasks, jax.tree.map(lambda *xs: jnp.stack(xs), *tasks)


def _np_inner(w, X, y, steps, lr, optimizer, nu=0.0, count=0):
  """The inner loop written out in numpy: SGD, or Adam with beta1 = 0 starting
  from second moment `nu` after `count` earlier steps; returns (w, nu)."""
  w = np.array(w)
  nu = np.zeros_like(w) + nu
  for t in range(count + 1, count + steps + 1):
    g = 2 * X.T @ (X @ w - y) / len(X)
    if optimizer == "sgd":
      w = w - lr * g
    else:  # Adam, beta1 = 0, beta2 = 0.999, eps = 1e-8, bias-corrected nu
      nu = 0.999 * nu + 0.001 * g * g
      w = w - lr * g / (np.sqrt(nu / (1 - 0.999 ** t)) + 1e-8)
  return w, nu


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_reptile_update_equals_formula(optimizer, jit):
  with jax.enable_x64(True):
    task_list, tasks = _task_batch(jax.random.PRNGKey(0), 4, dim=3)
    theta = jax.random.normal(jax.random.PRNGKey(1), (3, 1), jnp.float64)
    eps, lr, steps = 0.3, 0.05, 4
    algo = Algorithm(name="reptile", steps=steps, inner_lr=lr,
                     inner_optimizer=optimizer)
    loss_fn = lambda p, b: linear_loss(p["w"], b)
    meta_params = {"params": {"w": theta}, "inner_lr": None}
    gradient = lambda mp, t: meta_gradient(algo, loss_fn, mp, t)
    _, grads = (jax.jit(gradient) if jit else gradient)(meta_params, tasks)
    opt = optax.sgd(eps)
    updates, _ = opt.update(grads, opt.init(meta_params), meta_params)
    new_theta = optax.apply_updates(meta_params, updates)["params"]["w"]
    phis = [_np_inner(theta, np.asarray(t["support"][0]), np.asarray(t["support"][1]),
                      steps, lr, optimizer)[0] for t in task_list]
    expected = np.asarray(theta) + eps * (np.mean(phis, axis=0) - np.asarray(theta))
    np.testing.assert_allclose(new_theta, expected, rtol=1e-10)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_reptile_inner_minibatches_walk_through_the_support(optimizer):
  # 7 support rows, minibatches of 3, 4 steps: rows 0-2, 3-5, 6,0,1, 2-4.
  with jax.enable_x64(True):
    task_list, tasks = _task_batch(jax.random.PRNGKey(2), 3, n_support=7, dim=2)
    theta = jax.random.normal(jax.random.PRNGKey(3), (2, 1), jnp.float64)
    lr, steps = 0.1, 4
    algo = Algorithm(name="reptile", steps=steps, inner_lr=lr,
                     inner_optimizer=optimizer, inner_batch=3)
    loss_fn = lambda p, b: linear_loss(p["w"], b)
    _, grads = meta_gradient(algo, loss_fn, {"params": {"w": theta}, "inner_lr": None},
                             tasks)
    rows = [[0, 1, 2], [3, 4, 5], [6, 0, 1], [2, 3, 4]]
    phis = []
    for t in task_list:
      X, y = map(np.asarray, t["support"])
      w, nu = np.asarray(theta), 0.0
      for i, r in enumerate(rows, 1):
        g = 2 * X[r].T @ (X[r] @ w - y[r]) / 3
        if optimizer == "sgd":
          w = w - lr * g
        else:
          nu = 0.999 * nu + 0.001 * g * g
          w = w - lr * g / (np.sqrt(nu / (1 - 0.999 ** i)) + 1e-8)
      phis.append(w)
    np.testing.assert_allclose(grads["params"]["w"], np.asarray(theta) - np.mean(phis, 0),
                               rtol=1e-10)


def test_reptile_carried_inner_adam_over_meta_steps():
  """Three meta-steps with the inner Adam's second moment carried: each task
  starts from the carried (nu, count), the next nu is the tasks' mean, and the
  count advances by the inner steps. Against the numpy loop, one meta-step at
  a time through the jitted train step (so the state round trip is checked)."""
  from metajax.step import TrainState, init_state, make_meta_step
  with jax.enable_x64(True):
    task_list, tasks = _task_batch(jax.random.PRNGKey(4), 3, dim=3)
    theta = jax.random.normal(jax.random.PRNGKey(5), (3, 1), jnp.float64)
    eps, lr, steps = 0.5, 0.05, 4
    algo = Algorithm(name="reptile", steps=steps, inner_lr=lr, inner_optimizer="adam",
                     carry_inner_adam=True)
    loss_fn = lambda p, b: linear_loss(p["w"], b)
    opt = optax.sgd(eps)
    state = init_state(algo, {"w": theta}, opt, jax.random.PRNGKey(0))
    assert isinstance(state, TrainState) and int(state.adam_carry["count"]) == 0
    step = jax.jit(make_meta_step(algo, loss_fn, lambda key: tasks, opt))
    w, nu = np.asarray(theta), np.zeros((3, 1))
    for m in range(3):
      state, _ = step(state, jax.random.PRNGKey(m))
      outs = [_np_inner(w, *map(np.asarray, t["support"]), steps, lr, "adam", nu, m * steps)
              for t in task_list]
      w = w + eps * (np.mean([o[0] for o in outs], 0) - w)
      nu = np.mean([o[1] for o in outs], 0)
      np.testing.assert_allclose(state.params["w"], w, rtol=1e-10)
      np.testing.assert_allclose(state.adam_carry["nu"]["w"], nu, rtol=1e-10)
      assert int(state.adam_carry["count"]) == (m + 1) * steps
    # Evaluation adapts from the carried state too.
    from metajax.evaluate import adaptation_losses
    losses = adaptation_losses(algo, loss_fn, state.adaptation_params(), tasks, steps=steps)
    phi0 = _np_inner(w, *map(np.asarray, task_list[0]["support"]), steps, lr, "adam", nu,
                     3 * steps)[0]
    X, y = map(np.asarray, task_list[0]["query"])
    np.testing.assert_allclose(losses[0, -1], np.mean((X @ phi0 - y) ** 2), rtol=1e-9)


def test_an_unknown_algorithm_name_is_refused_not_run_as_maml():
  with pytest.raises(ValueError, match="unknown algorithm 'reptil'; expected one of .*'reptile'"):
    Algorithm(name="reptil", steps=1, inner_lr=0.1)
  with pytest.raises(ValueError, match="unknown algorithm 'MAML'"):
    Algorithm.named("MAML", steps=1, inner_lr=0.1)


def test_carry_inner_adam_needs_reptile_with_adam():
  from metajax import config as config_lib
  c = config_lib.sinusoid_base()
  c.update(dict(algorithm="reptile", carry_inner_adam=True))
  with pytest.raises(config_lib.ConfigError, match="needs algorithm='reptile' and "
                     "inner_optimizer='adam' \\(got 'reptile', 'sgd'\\)"):
    config_lib.validate(c)
  c.inner_optimizer = "adam"
  config_lib.validate(c)


def test_inner_batch_is_only_for_reptile():
  from metajax import config as config_lib
  c = config_lib.sinusoid_base()
  c.inner_batch = 5
  with pytest.raises(config_lib.ConfigError, match="inner_batch=5 is Reptile's"):
    config_lib.validate(c)
  c.algorithm = "reptile"
  config_lib.validate(c)


def test_inner_batch_larger_than_support_is_an_error():
  task = random_task(jax.random.PRNGKey(0), n_support=4, dtype=jnp.float32)
  with pytest.raises(ValueError, match="inner_batch=5 exceeds the 4 support rows"):
    metajax.adapt(tanh_mlp_loss, tanh_mlp_params(jax.random.PRNGKey(1), dtype=jnp.float32),
                  task["support"], steps=2, lr=0.1, inner_batch=5)


def test_metasgd_lr_gradient_matches_finite_differences():
  with jax.enable_x64(True):
    params = tanh_mlp_params(jax.random.PRNGKey(2), sizes=(1, 4, 1))
    lr = jax.tree.map(lambda p: jnp.full_like(p, 0.05) + 0.01 * p, params)
    task = random_task(jax.random.PRNGKey(3))
    lr_flat, unravel = ravel_pytree(lr)
    loss = lambda a: metajax.maml_loss(tanh_mlp_loss, params, task, steps=2, lr=a)
    grad = ravel_pytree(jax.grad(loss)(lr))[0]
    fd = central_fd_grad(jax.jit(lambda v: loss(unravel(v))), lr_flat)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)
    assert np.all(np.abs(grad) > 0)


def test_metasgd_scalar_rates_equal_maml():
  with jax.enable_x64(True):
    params = tanh_mlp_params(jax.random.PRNGKey(4))
    task = random_task(jax.random.PRNGKey(5))
    lr_tree = jax.tree.map(lambda p: jnp.full_like(p, 0.2), params)
    a = metajax.maml_loss(tanh_mlp_loss, params, task, steps=2, lr=0.2)
    b = metajax.maml_loss(tanh_mlp_loss, params, task, steps=2, lr=lr_tree)
    np.testing.assert_allclose(a, b, rtol=1e-12)


class AnilTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_body_untouched_head_adapted(self):
    params = tanh_mlp_params(jax.random.PRNGKey(6), dtype=jnp.float32)
    task = random_task(jax.random.PRNGKey(7), dtype=jnp.float32)
    phi = self.variant(lambda p: metajax.adapt(
        tanh_mlp_loss, p, task["support"], steps=3, lr=0.5,
        mask=head_mask(p)))(params)
    for name in ("hidden_0", "hidden_1"):
      for leaf in ("w", "b"):
        np.testing.assert_array_equal(phi[name][leaf], params[name][leaf])
    assert np.max(np.abs(phi["head"]["w"] - params["head"]["w"])) > 1e-3

  def test_anil_meta_gradient_matches_finite_differences(self):
    # The body is still meta-learned: its gradient flows through the head's steps.
    with jax.enable_x64(True):
      params = tanh_mlp_params(jax.random.PRNGKey(8), sizes=(1, 4, 1))
      task = random_task(jax.random.PRNGKey(9))
      flat, unravel = ravel_pytree(params)
      loss = lambda p: metajax.maml_loss(tanh_mlp_loss, p, task, steps=2, lr=0.3,
                                         mask=head_mask(p))
      grad = ravel_pytree(jax.grad(loss)(params))[0]
      fd = central_fd_grad(jax.jit(lambda v: loss(unravel(v))), flat)
      np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)
      full = ravel_pytree(jax.grad(lambda p: metajax.maml_loss(
          tanh_mlp_loss, p, task, steps=2, lr=0.3))(params))[0]
      assert np.max(np.abs(full - grad)) > 1e-4  # differs from adapting everything

  def test_features_once_equal_the_masked_loop_on_conv4(self):
    # metajax.anil: the body's features computed once per task must give the
    # masked inner loop's loss, meta-gradient (body and head) and test scores.
    from metajax.algorithms import uses_head_split
    from metajax.evaluate import adaptation_losses
    from metajax.tasks.fewshot import Problem, synthetic_tasks
    with jax.enable_x64(True):
      problem = Problem(ways=3, filters=4, image_shape=(16, 16, 1), conv_impl="im2col")
      params = jax.tree.map(lambda a: a.astype(jnp.float64),
                            problem.init_params(jax.random.PRNGKey(30)))
      tasks = jax.tree.map(lambda a: a.astype(jnp.float64) if a.dtype.kind == "f" else a,
                           synthetic_tasks(jax.random.PRNGKey(31), meta_batch=3, ways=3,
                                           shots=2, queries=3, image_shape=(16, 16, 1)))
      mp = {"params": params, "inner_lr": None}
      # scan batching, as the image configs run (the split is per task either way).
      algo = Algorithm.named("anil", steps=2, inner_lr=0.5, batching="scan")
      assert uses_head_split(algo, problem.head_split())
      grad = jax.jit(lambda m, t, split: meta_gradient(
          algo, problem.loss_fn, m, t, head_split=split), static_argnums=2)
      masked, once = grad(mp, tasks, None), grad(mp, tasks, problem.head_split())
      chex.assert_trees_all_close(once, masked, rtol=1e-9, atol=1e-12)
      assert np.abs(ravel_pytree(masked[1]["params"]["block_0"])[0]).max() > 1e-4
      # Scores after every step (accuracy), and the last one only (loss).
      for metric, split, last_only in ((problem.accuracy, problem.head_split("accuracy"), False),
                                       (None, problem.head_split(), True)):
        scores = jax.jit(lambda m, t, s: adaptation_losses(
            algo, problem.loss_fn, m, t, steps=3, metric=metric, last_only=last_only,
            head_split=s), static_argnums=2)
        np.testing.assert_allclose(scores(mp, tasks, split), scores(mp, tasks, None),
                                   rtol=1e-9, atol=1e-12)


def _hand_task_value_and_grad(name, params, task, steps, rates):
  """One task's (query loss, (d/d params, d/d rates)) with the inner loop written
  out: SGD at per-entry `rates`; first order stops the inner gradients; ANIL
  adapts only the head."""
  def query_loss(p, rates):
    phi = p
    for _ in range(steps):
      g = jax.grad(tanh_mlp_loss)(phi, task["support"])
      if name == "fomaml":
        g = jax.lax.stop_gradient(g)
      if name == "anil":
        g = {k: v if k == "head" else jax.tree.map(jnp.zeros_like, v) for k, v in g.items()}
      phi = jax.tree.map(lambda a, r, b: a - r * b, phi, rates, g)
    return tanh_mlp_loss(phi, task["query"])
  return jax.value_and_grad(query_loss, argnums=(0, 1))(params, rates)


@pytest.mark.parametrize("name", ["maml", "fomaml", "metasgd", "anil", "reptile", "imaml"])
def test_vmapped_meta_batch_equals_python_loop(name):
  with jax.enable_x64(True):
    params = tanh_mlp_params(jax.random.PRNGKey(10))
    task_list, tasks = _task_batch(jax.random.PRNGKey(11), 5)
    algo = Algorithm.named(name, steps=2, inner_lr=0.1)
    rates = jax.tree.map(lambda p: jnp.full_like(p, 0.1), params)
    if name == "metasgd":  # distinct per-entry rates, each leaf its own draw
      leaves, treedef = jax.tree.flatten(params)
      keys = jax.random.split(jax.random.PRNGKey(12), len(leaves))
      rates = jax.tree.unflatten(treedef, [0.05 + 0.1 * jax.random.uniform(k, p.shape, p.dtype)
                                           for k, p in zip(keys, leaves)])
    meta_params = {"params": params, "inner_lr": rates if name == "metasgd" else None}
    loss, grads = meta_gradient(algo, tanh_mlp_loss, meta_params, tasks)
    if name in ("reptile", "imaml"):  # their per-task truths: the one-task batch,
      # itself checked against closed forms and numpy loops in this file and
      # test_imaml.py; here the mean over the vmapped batch is what is tested.
      per_task = [meta_gradient(algo, tanh_mlp_loss, meta_params,
                                jax.tree.map(lambda a: a[None], t)) for t in task_list]
      per_task = [(l, g["params"]) for l, g in per_task]
    else:  # an inner loop written out, one task at a time
      hand = jax.jit(lambda p, t, r: _hand_task_value_and_grad(name, p, t, 2, r))
      per_task = [hand(params, t, rates) for t in task_list]
      if name == "metasgd":  # the learned rates' meta-gradient too
        want = jax.tree.map(lambda *gs: np.mean(gs, axis=0), *[g[1] for _, g in per_task])
        chex.assert_trees_all_close(grads["inner_lr"], want, rtol=1e-10, atol=1e-14)
      per_task = [(l, g[0]) for l, g in per_task]
    np.testing.assert_allclose(loss, np.mean([l for l, _ in per_task]), rtol=1e-12)
    expected = jax.tree.map(lambda *gs: np.mean(gs, axis=0), *[g for _, g in per_task])
    chex.assert_trees_all_close(grads["params"], expected, rtol=1e-10, atol=1e-14)


def test_jit_and_no_jit_meta_gradient_agree():
  params = tanh_mlp_params(jax.random.PRNGKey(12), dtype=jnp.float32)
  _, tasks = _task_batch(jax.random.PRNGKey(13), 3, dtype=jnp.float32)
  algo = Algorithm(name="maml", steps=3, inner_lr=0.1)
  mp = {"params": params, "inner_lr": None}
  eager = meta_gradient(algo, tanh_mlp_loss, mp, tasks)
  jitted = jax.jit(lambda m, t: meta_gradient(algo, tanh_mlp_loss, m, t))(mp, tasks)
  chex.assert_trees_all_close(eager, jitted, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["maml", "reptile", "imaml"])
@pytest.mark.parametrize("strategy,chunk", [("scan", 1), ("scan", 3), ("unroll", 2)])
def test_batching_strategies_equal_plain_vmap(name, strategy, chunk):
  with jax.enable_x64(True):
    params = tanh_mlp_params(jax.random.PRNGKey(14))
    _, tasks = _task_batch(jax.random.PRNGKey(15), 6)
    mp = {"params": params, "inner_lr": None}
    plain = Algorithm(name=name, steps=2, inner_lr=0.1)
    other = Algorithm(name=name, steps=2, inner_lr=0.1, batching=strategy,
                      task_chunk=chunk)
    chex.assert_trees_all_close(meta_gradient(plain, tanh_mlp_loss, mp, tasks),
                                meta_gradient(other, tanh_mlp_loss, mp, tasks),
                                rtol=1e-12, atol=1e-15)


def test_chunk_must_divide_meta_batch():
  from metajax.batching import task_mean
  with pytest.raises(ValueError, match="chunk 4 .* 6 tasks"):
    task_mean(lambda t: t, jnp.zeros((6, 2)), strategy="scan", chunk=4)


def _is_bn_leaf(path):
  return any(getattr(k, "key", None) in ("bn_scale", "bn_bias") for k in path)


def _bn_mlp_loss(params, batch):
  """Softmax cross-entropy of a 2-layer net with batch norm (batch statistics)
  on its hidden layer; the BN leaves are named as in Conv4."""
  x_NxD, y_N = batch
  b = params["block_0"]
  h = x_NxD @ b["kernel"] + b["bias"]
  h = (h - h.mean(0)) / jnp.sqrt(h.var(0) + 1e-5) * b["bn_scale"] + b["bn_bias"]
  logits = jnp.tanh(h) @ params["head"]["kernel"] + params["head"]["bias"]
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y_N[:, None], 1))


@pytest.mark.parametrize("name,jit", [("maml", True), ("maml", False), ("fomaml", True),
                                      ("fomaml", False), ("metasgd", True), ("metasgd", False)])
def test_bn_outer_only_keeps_batch_norm_out_of_the_inner_loop(name, jit):
  # Against a written-out inner loop that updates every leaf but the BN ones
  # (selected by name), per task in a Python loop: MAML differentiates through
  # it, first-order MAML takes the query gradient at the adapted parameters,
  # Meta-SGD steps with its per-parameter rates (and learns them).
  from metajax import config as config_lib
  with jax.enable_x64(True):
    k = jax.random.split(jax.random.PRNGKey(0), 8)
    params = {"block_0": {"kernel": jax.random.normal(k[0], (4, 6)) / 2,
                          "bias": 0.1 * jax.random.normal(k[1], (6,)),
                          "bn_scale": 1.0 + 0.3 * jax.random.normal(k[2], (6,)),
                          "bn_bias": 0.3 * jax.random.normal(k[3], (6,))},
              "head": {"kernel": jax.random.normal(k[4], (6, 3)) / 2, "bias": jnp.zeros(3)}}
    labels = jnp.tile(jnp.arange(3), (2, 2))  # 2 tasks x 6 images, 3 ways
    tasks = {"support": (jax.random.normal(k[5], (2, 6, 4)), labels),
             "query": (jax.random.normal(k[6], (2, 6, 4)), labels)}
    config = config_lib.fewshot_base("omniglot")
    config.update(algorithm=name, inner_steps=2, inner_lr=0.5, bn_outer_only=True,
                  batching="vmap")
    algo = Algorithm.from_config(config_lib.validate(config))
    # Meta-SGD: one learned rate per parameter, around 0.5; MAML: 0.5 everywhere.
    rates = (jax.tree.map(lambda p: 0.5 + 0.1 * jnp.cos(jnp.arange(p.size).reshape(p.shape)),
                          params) if name == "metasgd" else None)

    def adapt(theta, alpha, support):
      phi = theta
      for _ in range(2):
        g = jax.grad(_bn_mlp_loss)(phi, support)
        if name == "fomaml":
          g = jax.lax.stop_gradient(g)
        lr = alpha if alpha is not None else jax.tree.map(lambda _: 0.5, phi)
        phi = jax.tree_util.tree_map_with_path(
            lambda path, p, gg, a: p if _is_bn_leaf(path) else p - a * gg, phi, g, lr)
      return phi

    def written_out(theta, task):
      if name == "fomaml":
        return {"params": jax.grad(_bn_mlp_loss)(adapt(theta, None, task["support"]),
                                                 task["query"])}
      query_loss = lambda t, a: _bn_mlp_loss(adapt(t, a, task["support"]), task["query"])
      g_theta, g_alpha = jax.grad(query_loss, argnums=(0, 1))(theta, rates)
      return {"params": g_theta} if rates is None else {"params": g_theta, "inner_lr": g_alpha}

    fn = lambda p, t: meta_gradient(algo, _bn_mlp_loss, {"params": p, "inner_lr": rates}, t)
    _, grads = (jax.jit(fn) if jit else fn)(params, tasks)
    expected = jax.tree.map(lambda *g: np.mean(g, axis=0), *[
        written_out(params, jax.tree.map(lambda a: a[i], tasks)) for i in range(2)])
    chex.assert_trees_all_close(grads["params"], expected["params"], rtol=1e-10, atol=1e-13)
    if name == "metasgd":
      # The BN rates are never used, so their meta-gradient is exactly zero.
      chex.assert_trees_all_close(grads["inner_lr"], expected["inner_lr"],
                                  rtol=1e-10, atol=1e-13)
      assert not np.any(grads["inner_lr"]["block_0"]["bn_scale"])
    # ... and adapting BN too (the default) gives a different meta-gradient.
    default = Algorithm.from_config(config_lib.validate(_off(config)))
    _, other = meta_gradient(default, _bn_mlp_loss, {"params": params, "inner_lr": rates},
                             tasks)
    diff = ravel_pytree(other["params"])[0] - ravel_pytree(grads["params"])[0]
    assert np.linalg.norm(diff) > 1e-3 * np.linalg.norm(ravel_pytree(grads["params"])[0])


def _off(config):
  c = config.copy_and_resolve_references()
  c.bn_outer_only = False
  return c


@pytest.mark.parametrize("changes,match", [
    (dict(bn_outer_only=True, algorithm="imaml"), "imaml"),
    (dict(bn_outer_only=True, bn="none"), "no batch-norm"),
    (dict(bn_outer_only=True, algorithm="reptile", inner_optimizer="adam"), "reptile"),
    (dict(bn_outer_only=True, algorithm="anil"), "ANIL"),
])
def test_bn_outer_only_bad_values(changes, match):
  from metajax import config as config_lib
  config = config_lib.fewshot_base("omniglot")
  config.update(**changes)
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(config)


def test_the_recorded_test_rate():
  from metajax.algorithms import recorded_test_rate
  maml = Algorithm.named("maml", steps=1, inner_lr=0.4)
  metasgd = Algorithm.named("metasgd", steps=1, inner_lr=0.4)
  assert recorded_test_rate(maml, -1.0) == 0.4
  assert recorded_test_rate(maml, 0.1) == 0.1
  assert recorded_test_rate(metasgd, -1.0) == "learned"
  # A re-test's eval_inner_lr replaces the learned rates (checked below).
  assert recorded_test_rate(metasgd, 0.1) == 0.1


def _hand_adaptation(params, task, steps, rate):
  """Query loss before and after each of `steps` plain SGD steps on the
  support loss; rate(t) -> a scalar or a pytree like params (per entry)."""
  phi, losses = params, [tanh_mlp_loss(params, task["query"])]
  for t in range(steps):
    g = jax.grad(tanh_mlp_loss)(phi, task["support"])
    r = rate(t)
    r = r if isinstance(r, dict) else jax.tree.map(lambda _: r, phi)
    phi = jax.tree.map(lambda p, lr, gi: p - lr * gi, phi, r, g)
    losses.append(tanh_mlp_loss(phi, task["query"]))
  return jnp.stack(losses)


class TestTimeAdaptationTest(chex.TestCase):
  """evaluate.adaptation_losses adapts with the rates training learned (Meta-SGD's
  per entry, LSLR's per leaf and step), or with eval_inner_lr where given."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_learned_and_overridden_rates_against_a_hand_loop(self):
    from metajax.evaluate import adaptation_losses
    with jax.enable_x64(True):
      params = tanh_mlp_params(jax.random.PRNGKey(0), sizes=(1, 4, 1))
      tasks, batch = _task_batch(jax.random.PRNGKey(1), 2)
      leaves, treedef = jax.tree.flatten(params)
      keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
      per_entry = jax.tree.unflatten(treedef, [
          jax.random.uniform(k, p.shape, p.dtype, 0.02, 0.4) for k, p in zip(keys, leaves)])
      per_step = jax.tree.unflatten(treedef, [
          jax.random.uniform(k, (3,), p.dtype, 0.02, 0.4) for k, p in zip(keys, leaves)])
      metasgd = Algorithm.named("metasgd", steps=3, inner_lr=0.1)
      lslr = Algorithm(name="mamlpp", steps=3, inner_lr=0.1, lslr=True)
      cases = [  # (algorithm, learned rates, lr override, the rate of step t)
          (metasgd, per_entry, None, lambda t: per_entry),
          (metasgd, per_entry, 0.2, lambda t: 0.2),
          (lslr, per_step, None, lambda t: jax.tree.map(lambda r: r[t], per_step)),
          (lslr, per_step, 0.2, lambda t: 0.2),
      ]
      for algo, rates, lr, rate in cases:
        got = self.variant(lambda mp, b, algo=algo, lr=lr: adaptation_losses(
            algo, tanh_mlp_loss, mp, b, steps=3, lr=lr))(
                {"params": params, "inner_lr": rates}, batch)
        want = jnp.stack([_hand_adaptation(params, t, 3, rate) for t in tasks])
        np.testing.assert_allclose(got, want, rtol=1e-12)
      # The cases differ from each other by more than rounding.
      scalar = jnp.stack([_hand_adaptation(params, t, 3, lambda _: 0.2) for t in tasks])
      learned = jnp.stack([_hand_adaptation(params, t, 3, lambda _: per_entry)
                           for t in tasks])
      assert np.max(np.abs(scalar[:, 1:] - learned[:, 1:])) > 1e-3


def test_head_mask_refuses_params_without_a_head():
  with pytest.raises(ValueError, match=r"no top-level 'head' module \(top-level keys: "
                     r"Dense_0, Dense_1\)"):
    head_mask({"Dense_0": {"kernel": jnp.ones(2)}, "Dense_1": {"kernel": jnp.ones(2)}})
  with pytest.raises(ValueError, match=r'pass variables\["params"\]'):
    head_mask({"params": {"head": {"kernel": jnp.ones(2)}}})
  mask = head_mask({"body": {"kernel": jnp.ones(2)}, "head": {"kernel": jnp.ones(2)}})
  assert mask == {"body": {"kernel": False}, "head": {"kernel": True}}


def test_metasgd_rates_start_uniform_in_their_range():
  from metajax.step import init_state
  params = tanh_mlp_params(jax.random.PRNGKey(0), sizes=(1, 40, 40, 1), dtype=jnp.float32)
  algo = Algorithm.named("metasgd", steps=1, inner_lr=0.01)
  state = init_state(algo, params, optax.adam(1e-3), jax.random.PRNGKey(1),
                     metasgd_lr_range=(0.005, 0.1))
  chex.assert_trees_all_equal_shapes(state.inner_lr, params)
  rates = np.concatenate([np.ravel(r) for r in jax.tree.leaves(state.inner_lr)])
  assert rates.size == 1761 and rates.min() >= 0.005 and rates.max() <= 0.1
  # U(0.005, 0.1): mean 0.0525, sd 0.0274; the sample's mean is within ~7 standard errors.
  assert abs(rates.mean() - 0.0525) < 0.005 and abs(rates.std() - 0.0274) < 0.003
  # Each leaf draws its own rates (not one draw broadcast, nor the same key per leaf).
  w1, w2 = state.inner_lr["hidden_1"]["w"], state.inner_lr["hidden_0"]["w"]
  assert not np.allclose(np.ravel(w1)[:40], np.ravel(w2)[:40])
