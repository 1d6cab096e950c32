"""One metajax benchmark cell: compile one meta-step, time it, report memory."""

from __future__ import annotations

import os
import time

import jax
import numpy as np

from metajax import sharding
from metajax.algorithms import Algorithm
from metajax.batching import resolve
from metajax.bench import memory
from metajax.bench.presets import PRESETS, cell_remat, timed_iters
from metajax.heap import return_freed_heap
from metajax.inner import remat_mode
from metajax.step import (compile_lowered, compiler_options, init_state, make_meta_step,
                          make_train_chunk)


def _device_peak_mb():
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else peak / 2**20


def _image_setup(cell):
  from metajax.tasks.fewshot import Problem, synthetic_tasks
  p = dict(PRESETS[cell["preset"]])
  steps = cell.get("steps") or p["steps"]
  batching, chunk, conv = resolve(cell.get("batching", "auto"), cell.get("chunk"),
                                  cell.get("conv", "auto"), p["meta_batch"])
  # MAML++ cells: per-step batch norm (a BN set per inner step).
  bn = "per_step" if cell["algo"] == "mamlpp" else "transductive"
  problem = Problem(ways=p["ways"], filters=p["filters"],
                    image_shape=p["image_shape"], conv_impl=conv, bn=bn, bn_steps=steps)
  sample = lambda key: synthetic_tasks(
      key, meta_batch=p["meta_batch"], ways=p["ways"], shots=p["shots"],
      queries=p["queries"], image_shape=p["image_shape"])
  info = dict(batching=batching, chunk=chunk, conv=conv, steps=steps,
              meta_batch=p["meta_batch"], bn=bn)
  return problem, sample, steps, p["inner_lr"], p["meta_batch"], info


def _sine_setup(cell):
  from metajax.config import sinusoid_base
  from metajax.tasks.sinusoid import Problem
  config = sinusoid_base()
  problem = Problem(config)
  steps = cell.get("steps") or (5 if cell["algo"] == "reptile" else 1)
  info = dict(batching="vmap", chunk=None, conv=None, steps=steps,
              meta_batch=config.meta_batch)
  return problem, problem.sample_tasks, steps, config.inner_lr, config.meta_batch, info


def run_cell(cell: dict) -> dict:
  """cell: {"preset", "algo", optional "steps", "remat" (default: the preset's, else
  "auto"), "batching", "chunk", "conv", "iters", "steps_per_call", "features_once" (ANIL),
  "cpu_devices"}. Returns timings (s) and memory (MiB).

  "cpu_devices": N > 1 splits the host CPU into N JAX devices and the meta-batch
  over them, as `python -m metajax.train --config.cpu_devices=N` does
  (`metajax.sharding.set_cpu_devices`)."""
  cpu_devices = int(cell.get("cpu_devices", 0))
  sharding.set_cpu_devices(cpu_devices)
  iters = timed_iters(cell)
  import optax

  if cell["preset"] == "sine":
    problem, sample, steps, lr, meta_batch, info = _sine_setup(cell)
  else:
    problem, sample, steps, lr, meta_batch, info = _image_setup(cell)
  # MAML++ in its multi-step-loss phase, the costliest one (the switch to the
  # last-step loss is compiled too, as in a real run).
  mamlpp = (dict(lslr=True, msl_steps=10**9, per_step_bn=info.get("bn") == "per_step")
            if cell["algo"] == "mamlpp" else {})
  algo = Algorithm.named(cell["algo"], steps=steps, inner_lr=lr, remat=cell_remat(cell),
                         batching=info["batching"], task_chunk=info["chunk"] or 1, **mamlpp)
  # The mode its inner loop runs (MAML++ cells: their multi-step-loss phase).
  info["remat"] = (algo.remat_mode if not mamlpp else remat_mode(
      algo.remat, first_order=algo.first_order, steps=steps, observes=True))
  optimizer = optax.adam(1e-3)
  state = init_state(algo, problem.init_params(jax.random.PRNGKey(0)),
                     optimizer, jax.random.PRNGKey(1))
  mesh = None
  if cpu_devices > 1:
    mesh = sharding.make_mesh(cpu_devices)
    sharding.check_divisible(meta_batch, mesh, algo.task_chunk, algo.batching)
    state = sharding.place_state(state, mesh)
  info["devices"] = 1 if mesh is None else mesh.size
  # ANIL on images: the body's features once per task (metajax.anil), unless
  # the cell asks for the masked inner loop over the whole model.
  head_split = (problem.head_split() if algo.head_only and cell["preset"] != "sine"
                and cell.get("features_once", True) else None)
  meta_step = make_meta_step(algo, problem.loss_fn, sample, optimizer, head_split=head_split,
                             mesh=mesh)
  per_call = int(cell.get("steps_per_call", 1))

  options = compiler_options()  # before the clock: it may probe the jaxlib once
  t0 = time.perf_counter()
  lowered = make_train_chunk(meta_step, per_call).lower(state)
  trace_s = time.perf_counter() - t0
  compiled = compile_lowered(lowered)  # compile_s: with the trims of the freed heap (ms)
  compile_s = time.perf_counter() - t0 - trace_s
  # The lowered program (~10 MB for conv-4) is not needed to step: a training
  # run drops it, and so does the cell before measuring memory.
  del lowered
  # The device allocator's peak cannot be reset: its value here (the GPU
  # autotuner's scratch buffers included) tells whether the final peak is the
  # running step's or compilation's.
  compile_device_peak_mb = _device_peak_mb()
  mem = compiled.memory_analysis()
  xla_temp_mb = None if mem is None else mem.temp_size_in_bytes / 2**20
  # The analysis leaves ~34 MB of freed heap resident (Omniglot 5w1s), under
  # the warm-up step's peak; a training run does not ask for it.
  return_freed_heap()

  times, losses = [], []
  for i in range(iters + 1):  # the first is a warm-up
    if i == 1:
      mark = memory.reset_peak()  # from here: the memory of running, not compiling
    t = time.perf_counter()
    state, metrics = compiled(state)
    losses.append(float(np.asarray(metrics["loss"])[-1]))
    times.append((time.perf_counter() - t) / per_call)
  times = times[1:]
  median = float(np.median(times))
  return dict(
      impl="metajax", **info, median_s=median, min_s=float(np.min(times)),
      max_s=float(np.max(times)), n=len(times), trace_s=trace_s,
      compile_s=compile_s, peak_rss_mb=memory.whole_peak_mb(mark),
      run_rss_mb=memory.run_mb(mark),
      device_peak_mb=_device_peak_mb(), compile_device_peak_mb=compile_device_peak_mb,
      xla_temp_mb=xla_temp_mb,
      tasks_per_s=meta_batch / median, loss=losses[-1],
      backend=jax.default_backend(), device=str(jax.devices()[0].device_kind),
      jax_version=jax.__version__, compiler_options=options,
      xla_flags=os.environ.get("XLA_FLAGS", ""))

