"""Few-shot image classification runs: Omniglot and mini-ImageNet.

The training split lives on the device as uint8 and every meta-step draws its
episodes from it inside the jitted program (`metajax.tasks.episodes`).
Validation every `eval_every` meta-steps picks the best parameters; the test
split is scored once at the end on `eval_tasks` episodes fixed by `eval_seed`
(the same episodes for every algorithm and run), after 0..eval_max_steps
inner steps, as mean accuracy with its 95% CI.
"""

from __future__ import annotations

import dataclasses
from functools import partial
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from metajax import loop, sharding
from metajax.algorithms import Algorithm, recorded_test_rate
from metajax.batching import resolve
from metajax.checkpoint import Checkpoints
from metajax.evaluate import adaptation_losses, mean_ci95_per_step
from metajax.protonet import episode_accuracy, episode_loss
from metajax.step import initial_state, make_meta_step, make_outer_optimizer
from metajax.tasks.episodes import (channel_stats, check_episode_shape, episodes_from_keys,
                                    sample_episodes)
from metajax.tasks.fewshot import Problem


def load_images(config, split: str) -> np.ndarray:
  """The split as uint8 images_CxMxHxWxc (prepares the data set on first use)."""
  from metajax.datasets import load_split
  builder_config = config.dataset_config if config.task == "omniglot" else None
  return load_split(config.task, split, config=builder_config,
                    data_dir=config.data_dir or None,
                    manual_dir=config.manual_dir or None)


def _resolve(config):
  return resolve(config.batching, config.task_chunk, config.conv_impl, config.meta_batch)


def algorithm(config) -> Algorithm:
  """The config's algorithm with 'auto' batching / conv resolved for this backend."""
  batching, chunk, _ = _resolve(config)
  return dataclasses.replace(Algorithm.from_config(config), batching=batching,
                             task_chunk=chunk or 1)


def problem_for(config, image_shape) -> Problem:
  """The conv-4 problem a config trains (its conv form resolved for this backend)."""
  _, _, conv = _resolve(config)
  return Problem(ways=config.ways, filters=config.filters,
                 head=config.algorithm != "protonet", image_shape=image_shape, bn=config.bn,
                 conv_impl=conv, bn_steps=config.inner_steps, downsample=config.downsample)


def bn_in_inner_loop(config, algo: Algorithm):
  """Whether the inner loop adapts the batch-norm parameters (None: no inner
  loop, or no batch norm), as eval.json records it."""
  if config.bn == "none" or algo.name == "protonet":
    return None
  return not (algo.freezes_batch_norm or algo.head_only)


def make_evaluator(config, algo: Algorithm, problem: Problem, mean, std, *,
                   last_only: bool = False):
  """evaluate(meta_params, images, num_tasks) -> accuracy_BxS (S = 0..eval_max_steps),
  or with `last_only` accuracy_Bx1 after eval_max_steps only (validation: the
  per-step query passes it skips cost more than the adaptation itself).

  Episode i is drawn from key fold_in(PRNGKey(eval_seed), i): the episodes
  depend only on the seed, the split and N/K/Q, never on the model, the
  algorithm, the run or eval_batch (how many run in one jitted call).
  """
  lr = None if config.eval_inner_lr < 0 else config.eval_inner_lr
  base = jax.random.PRNGKey(config.eval_seed)

  @jax.jit
  def batch_accuracy(meta_params, images, first):
    keys = jax.vmap(partial(jax.random.fold_in, base))(first + jnp.arange(config.eval_batch))
    tasks = episodes_from_keys(keys, images, ways=config.ways, shots=config.k_shot,
                               queries=config.eval_query, mean=mean, std=std)
    if algo.name == "protonet":  # no adaptation: one column, "0 steps"
      acc = lambda task: episode_accuracy(problem.embed, meta_params["params"], task,
                                          config.ways)
      per_task = jax.vmap(acc) if algo.batching == "vmap" else partial(jax.lax.map, acc)
      return per_task(tasks)[:, None]
    return adaptation_losses(algo, problem.loss_fn, meta_params, tasks,
                             steps=config.eval_max_steps, lr=lr, metric=problem.accuracy,
                             last_only=last_only,
                             head_split=problem.head_split("accuracy") if algo.head_only
                             else None)

  def evaluate(meta_params, images, num_tasks: int) -> np.ndarray:
    # On one device (images: sharding.on_one_device), from the parameters'
    # host copy, not replicated over the training mesh.
    meta_params = sharding.host_tree(meta_params)
    return np.concatenate([
        sharding.to_host(batch_accuracy(meta_params, images, first))
        for first in range(0, num_tasks, config.eval_batch)])

  return evaluate


def summarize(acc_BxS: np.ndarray) -> dict:
  """Mean and 95% CI per step. A step at which some episodes diverged (NaN
  accuracy, metajax.tasks.fewshot.accuracy) is null, with their count in
  diverged_tasks, as the sinusoid's eval.json reports it."""
  accuracy, ci95, diverged = mean_ci95_per_step(acc_BxS)
  return {"accuracy": accuracy, "ci95": ci95, "diverged_tasks": diverged,
          "final_accuracy": accuracy[-1], "final_ci95": ci95[-1]}


def validation_row(acc_B) -> dict:
  """metrics.jsonl's validation entries and the "score" that ranks the
  checkpoint, from each validation episode's accuracy (NaN: it diverged)."""
  acc = summarize(np.asarray(acc_B)[:, None])
  diverged = acc["diverged_tasks"][-1]
  return {"val_accuracy": acc["final_accuracy"], "val_ci95": acc["final_ci95"],
          **({"val_diverged_tasks": diverged} if diverged else {}),
          # A diverged episode counts as 0 correct, so one such episode lowers
          # the score without hiding what the others scored.
          "score": float(np.mean(np.nan_to_num(np.asarray(acc_B, np.float64), nan=0.0)))}


def percent(mean, ci95) -> str:
  """'12.34 ± 0.56%', or 'diverged' for a null (summarize)."""
  return "diverged" if mean is None else f"{100 * mean:.2f} ± {100 * ci95:.2f}%"


@dataclasses.dataclass
class Setup:
  """What meta-training and re-testing a config share. `state` is the initial
  TrainState placed on `mesh`: also the template checkpoints restore into."""
  algo: Algorithm
  conv: str
  problem: Problem
  optimizer: Any
  mesh: Any
  state: Any
  mean: Any  # per-channel input statistics (input_norm="standardize"), else None
  std: Any


def setup(config, image_shape, train_images=None, training: bool = True) -> Setup:
  """Algorithm, model, outer optimizer, device mesh and initial state of a config.
  `train_images` is needed only for input_norm="standardize" (its statistics).
  training=False (a re-test) skips the check that meta_batch splits over the
  devices: testing never splits a meta-batch."""
  mean, std = (None, None)
  if config.input_norm == "standardize":
    mean, std = channel_stats(train_images)
  algo = algorithm(config)
  _, _, conv = _resolve(config)
  problem = problem_for(config, image_shape)
  optimizer = make_outer_optimizer(config)
  mesh = sharding.make_mesh(config.num_devices)
  if training:
    sharding.check_divisible(config.meta_batch, mesh, algo.task_chunk, algo.batching)
  state = initial_state(config, algo, problem, optimizer, mesh)
  return Setup(algo, conv, problem, optimizer, mesh, state, mean, std)


def run_test(config, s: Setup, state, test_images) -> dict:
  """Scores `state`'s parameters on the config's fixed test episodes; returns
  what eval.json records about the test (protocol, model, accuracy per step)."""
  algo = s.algo
  test_steps = 0 if algo.name == "protonet" else config.eval_max_steps
  # Columns of the accuracy: every step 0..test_steps, or (test_every_step=False)
  # only the last, which skips the query passes after the other steps.
  steps = list(range(test_steps + 1)) if config.test_every_step else [test_steps]
  evaluate = make_evaluator(config, algo, s.problem, s.mean, s.std,
                            last_only=not config.test_every_step)
  t0 = time.perf_counter()
  acc = summarize(evaluate(state.adaptation_params(), sharding.on_one_device(test_images),
                           config.eval_tasks))
  test_s = time.perf_counter() - t0
  result = {
      "metric": "accuracy", "split": "test", "dataset": config.task,
      "dataset_config": config.dataset_config, "algorithm": config.algorithm,
      "first_order": algo.first_order, "ways": config.ways, "k_shot": config.k_shot,
      "k_shot_train": config.k_shot_train or config.k_shot, "k_query_train": config.k_query,
      "ways_train": config.ways_train or config.ways, "eval_query": config.eval_query,
      "inner_steps_train": config.inner_steps,
      "inner_steps_test": test_steps, "steps": steps,
      "inner_lr": recorded_test_rate(algo, config.eval_inner_lr),
      "lslr": algo.lslr, "msl_steps": algo.msl_steps,
      "first_order_steps": algo.first_order_steps,
      "outer_lr_schedule": config.outer_lr_schedule,
      "downsample": config.downsample, "bn": config.bn,
      "bn_in_inner_loop": bn_in_inner_loop(config, algo), "filters": config.filters,
      "input_norm": config.input_norm,
      "batching": algo.batching, "conv_impl": s.conv, "remat": algo.remat_mode,
      "meta_batch": config.meta_batch,
      "num_tasks": config.eval_tasks, "eval_seed": config.eval_seed,
      **acc, "test_s": test_s,
  }
  if algo.name == "imaml":  # the lambda each phase adapted with
    result.update(imaml_lam=algo.lam, imaml_eval_lam=algo.test_lam,
                  imaml_inner=algo.imaml_inner)
  return result


def train_and_evaluate(config, workdir: str, *, progress: bool = True) -> dict:
  t0 = time.perf_counter()
  train_images = load_images(config, "train")
  test_images = load_images(config, "test")
  val_images = load_images(config, "validation") if config.eval_every else None
  load_s = time.perf_counter() - t0
  train_shots = config.k_shot_train or config.k_shot
  train_ways = config.ways_train or config.ways
  for split, images, shots, queries, ways in (
      ("train split", train_images, train_shots, config.k_query, train_ways),
      ("validation split", val_images, config.k_shot, config.eval_query, config.ways),
      ("test split", test_images, config.k_shot, config.eval_query, config.ways)):
    if images is not None:
      check_episode_shape(images.shape, ways=ways, shots=shots,
                          queries=queries, split=split)
  s = setup(config, train_images.shape[2:], train_images)
  algo, problem, mesh, mean, std = s.algo, s.problem, s.mesh, s.mean, s.std
  protonet = config.algorithm == "protonet"
  sample = lambda key, images: sample_episodes(
      key, images, meta_batch=config.meta_batch, ways=train_ways,
      shots=train_shots, queries=config.k_query, mean=mean, std=std,
      shuffle_support=config.inner_batch > 0)
  loss_fn = problem.loss_fn
  if protonet:  # ProtoNet's "loss_fn" is the episode loss (metajax.algorithms)
    loss_fn = lambda params, task: episode_loss(problem.embed, params, task, train_ways)
  meta_step = make_meta_step(algo, loss_fn, sample, s.optimizer, mesh=mesh,
                             param_sharding=config.param_sharding,
                             skip_nonfinite=config.on_nan == "skip",
                             head_split=problem.head_split() if algo.head_only else None)
  evaluate_last = make_evaluator(config, algo, problem, mean, std, last_only=True)

  # Each split goes to its device once, not at every validation; validation
  # runs on one device (sharding.on_one_device), the parameters copied there.
  val_on_device = None if val_images is None else sharding.on_one_device(val_images)

  def validate(state):
    return validation_row(
        evaluate_last(state.adaptation_params(), val_on_device, config.val_tasks)[:, -1])

  checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"),
                            keep=config.keep_checkpoints)
  state, stats = loop.run(
      config, s.state, meta_step, workdir, checkpoints,
      data=sharding.place_state(train_images, mesh),
      on_boundary=validate if config.eval_every else None, progress=progress,
      desc=f"{config.algorithm} {config.task} {config.ways}w{config.k_shot}s")

  # Test the best-validated checkpoint (the final parameters without validation:
  # a resumed leg with eval_every=0 would otherwise test an earlier leg's best).
  best_step = checkpoints.best_step() if config.eval_every else None
  best_val = None
  if best_step is not None:
    # The ranking score: the validation accuracy, a diverged episode counted as wrong
    # (-inf where a checkpoint of an older metajax saw every episode diverge).
    best_val = checkpoints.metrics(best_step)["score"]
    best_val = best_val if np.isfinite(best_val) else None
    state, _ = checkpoints.restore(best_step, state)
  checkpoints.close()
  result = run_test(config, s, state, test_images)
  result.update({
      "params": "best validation" if best_step is not None else "final",
      "best_step": best_step, "best_val_accuracy": best_val,
      "val_tasks": config.val_tasks if config.eval_every else 0,
      "iterations": config.num_steps, "seed": config.seed,
      **stats, "data_load_s": load_s, "devices": mesh.size,
      "processes": jax.process_count(),
      "backend": jax.default_backend(), "jax_version": jax.__version__,
  })
  if jax.process_index() != 0:
    return result
  loop.replace_file(os.path.join(workdir, "eval.json"), json.dumps(result, indent=1))
  if config.plots:
    from metajax import plots  # matplotlib only when plotting
    plots.plot_curves(os.path.join(workdir, "curves.png"),
                      os.path.join(workdir, "metrics.jsonl"))
  return result


def summary(result) -> str:
  s = result["steps"]
  return (f"{result['algorithm']} {result['dataset']} {result['ways']}-way "
          f"{result['k_shot']}-shot: {result['iterations']} meta-steps in "
          f"{result['train_wall_s']:.0f}s (compile {result['compile_s']:.1f}s, "
          f"{result['sec_per_meta_step']:.3f} s/meta-step)\n"
          f"  test accuracy over {result['num_tasks']} episodes after {s[-1]} steps: "
          f"{percent(result['final_accuracy'], result['final_ci95'])} "
          f"({result['params']} parameters"
          + (f", step {result['best_step']}" if result["best_step"] is not None else "")
          + ")")
