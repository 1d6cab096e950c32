"""Evaluation: held-out tasks, loss after 0..T test-time inner steps.

The held-out tasks are fixed by `config.eval_seed`, so every algorithm and run
is scored on the same tasks. Reported: mean and 95% CI (1.96 * sd / sqrt(n)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from metajax.algorithms import (Algorithm, inner_lr, inner_mask, recorded_test_rate,
                                 uses_head_split)
from metajax.anil import head_of, on_features
from metajax.imaml import proximal_loss
from metajax.inner import inner_loop
from metajax.sharding import host_tree, to_host


def mean_ci95(values) -> tuple[float, float]:
  """Mean and half-width of the normal 95% interval, 1.96 * sd / sqrt(n)."""
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(1.96 * v.std(ddof=1) / np.sqrt(v.size))


def mean_ci95_per_step(values_BxS) -> tuple[list, list, list]:
  """(means, ci95s, diverged counts) over the B tasks of each of S columns. A
  column in which some task's value is not finite (rates tuned for few steps
  can diverge when run for more) has mean and CI None (JSON has no NaN)."""
  v = np.asarray(values_BxS, np.float64)
  diverged_S = [int(n) for n in (~np.isfinite(v)).sum(0)]
  per_step = [mean_ci95(col) if not n else (None, None) for col, n in zip(v.T, diverged_S)]
  return [m for m, _ in per_step], [c for _, c in per_step], diverged_S


def test_time_objective(algo: Algorithm, loss_fn, params):
  """The loss a task adapts on at test: the support loss, or for iMAML its
  proximal objective with lambda = algo.test_lam (0: the plain support loss,
  as the iMAML authors' code tests)."""
  if algo.name != "imaml" or algo.test_lam == 0:
    return loss_fn
  return proximal_loss(loss_fn, params, algo.test_lam)


def test_time_rate(algo: Algorithm, meta_params: dict, lr=None):
  """(rate, lr_per_step) of test-time adaptation: `lr` where given (a re-test's
  eval_inner_lr), else the trained rate (Meta-SGD's learned per-entry rates,
  LSLR's per leaf and step)."""
  if lr is None:
    return inner_lr(algo, meta_params), algo.lslr
  return lr, False


def adaptation_losses(algo: Algorithm, loss_fn, meta_params: dict, tasks: dict,
                      *, steps: int, lr=None, metric=None, last_only: bool = False,
                      head_split=None):
  """Query loss (or `metric(params, query)`) of each task before and after each
  of `steps` inner steps. `meta_params`: a TrainState's `adaptation_params()`
  (or just {"params", "inner_lr"}).

  Returns losses_BxS with S = steps + 1 (column 0: before adaptation), or with
  `last_only` losses_Bx1: only after the last step. Validation needs only that
  column, and the query set is usually far larger than the support set (75
  against 5 images in 5-way 1-shot), so skipping the per-step query passes
  makes it several times cheaper. `lr` overrides the inner rate (default: the
  trained one; learned for Meta-SGD). Tasks run with `jax.vmap` when
  algo.batching is "vmap", else one at a time (`lax.map`): a vmapped per-task
  convolution is slow on CPU (metajax.batching). `head_split` (ANIL,
  `metajax.anil`): adapt the head on the body's features, computed once per
  task; its `metric` (or `loss`) then replaces `metric`.
  """
  params = meta_params["params"]
  lr, lr_per_step = test_time_rate(algo, meta_params, lr)
  split = head_split if uses_head_split(algo, head_split) else None
  if split is None:
    mask = inner_mask(algo, params)
    metric = loss_fn if metric is None else metric
    inner_loss = test_time_objective(algo, loss_fn, params)
  else:  # ANIL: the head adapts on the body's features (metajax.anil)
    mask, inner_loss = None, split.loss
    metric = split.loss if split.metric is None else split.metric

  # Reptile with a carried inner Adam adapts from the carried state, as the
  # reference code evaluates with its training-time optimizer.
  adam_carry = meta_params.get("adam_carry")

  def one_task(task):
    start = params
    if split is not None:  # the body runs once per task, not at every step
      task, start = on_features(split, params, task), head_of(params)
    # MAML++'s per-step BN: the query after step t uses step t's parameters.
    query_metric = lambda p, **step: metric(p, task["query"], **step)
    adapted, after_T, *_ = inner_loop(
        inner_loss, start, task["support"], steps=steps, lr=lr, mask=mask,
        optimizer=algo.inner_optimizer, observe=None if last_only else query_metric,
        lr_per_step=lr_per_step, step_arg=algo.per_step_bn, adam_carry=adam_carry)
    if last_only:  # after step T - 1 (with 0 steps: `params`, before adaptation)
      last = {"step": steps - 1} if algo.per_step_bn and steps else {}
      return query_metric(adapted, **last)[None]
    before = query_metric(start)[None]
    return before if after_T is None else jnp.concatenate([before, after_T])

  if algo.batching == "vmap":
    return jax.vmap(one_task)(tasks)
  return jax.lax.map(one_task, tasks)


def evaluate(config, algo: Algorithm, problem, meta_params: dict) -> dict:
  """Post-adaptation query MSE for each K in eval_shots and 0..eval_max_steps.
  Runs on one device, from the parameters' host copy (not replicated over a
  mesh, where every device would compute the same tasks)."""
  meta_params = host_tree(meta_params)
  lr = None if config.eval_inner_lr < 0 else config.eval_inner_lr
  run = jax.jit(lambda mp, tasks: adaptation_losses(
      algo, problem.loss_fn, mp, tasks, steps=config.eval_max_steps, lr=lr))
  results = {}
  for k in config.eval_shots:
    key = jax.random.fold_in(jax.random.PRNGKey(config.eval_seed), k)
    tasks = problem.sample_tasks(key, meta_batch=config.eval_tasks, k_shot=k,
                                 k_query=config.eval_query)
    mse, ci95, diverged = mean_ci95_per_step(run(meta_params, tasks))
    results[str(k)] = {"mse": mse, "ci95": ci95, "diverged_tasks": diverged}
  return {"metric": "query MSE", "num_tasks": config.eval_tasks,
          "query_points": config.eval_query, "eval_seed": config.eval_seed,
          "steps": list(range(config.eval_max_steps + 1)),
          "inner_lr": recorded_test_rate(algo, config.eval_inner_lr),
          "by_k_shot": results}


def make_validator(config, algo: Algorithm, problem):
  """validate(meta_params) -> {"val_mse", "val_ci95", "score"}: query MSE after
  `inner_steps` steps at K = k_shot on `val_tasks` held-out tasks (their own
  key, not the test tasks'); score = -MSE ranks checkpoints. Where some tasks'
  loss is not finite: val_mse and val_ci95 None, "val_diverged_tasks" their
  count, score -inf."""
  key = jax.random.fold_in(jax.random.PRNGKey(config.eval_seed), 1_000_000)
  tasks = problem.sample_tasks(key, meta_batch=config.val_tasks, k_shot=config.k_shot,
                               k_query=config.eval_query)
  run = jax.jit(lambda mp: adaptation_losses(
      algo, problem.loss_fn, mp, tasks, steps=config.inner_steps, last_only=True)[:, 0])

  def validate(meta_params) -> dict:
    # On one device, as evaluate: from the parameters' host copy.
    [mse], [ci], [diverged] = mean_ci95_per_step(to_host(run(host_tree(meta_params)))[:, None])
    if diverged:  # null, the count, and the lowest checkpoint rank
      return {"val_mse": None, "val_ci95": None, "val_diverged_tasks": diverged,
              "score": -np.inf}
    return {"val_mse": mse, "val_ci95": ci, "score": -mse}

  return validate
