"""The meta-training loop shared by every task: chunks, logging, NaN stop.

`run(...)` calls the jitted `make_train_chunk` program for `config.num_steps`
meta-steps, `steps_per_call` at a time, never crossing a logging or
validation boundary; it writes one metrics.jsonl row per `log_every` steps
and calls `on_boundary(state)` every `eval_every` steps (if set).
"""

from __future__ import annotations

import json
import time
from typing import Callable, Optional

import numpy as np
from tqdm import tqdm

from metajax.step import make_train_chunk


def chunk_sizes(num_steps: int, steps_per_call: int, periods):
  """(n, at_boundary_step) pairs: chunks that never cross a multiple of any period."""
  periods = [p for p in periods if p]
  step = 0
  while step < num_steps:
    nxt = min([(step // p + 1) * p for p in periods] + [num_steps, step + steps_per_call])
    yield nxt - step, nxt
    step = nxt


def run(config, state, meta_step, metrics_path: str, *, data=None,
        on_boundary: Optional[Callable] = None, progress: bool = True,
        desc: str = ""):
  """Meta-trains from `state`; returns (state, stats).

  `on_boundary(state) -> dict` runs every `config.eval_every` steps (when the
  config has that key and it is > 0) and at the end; what it returns is added
  to that step's metrics row. Raises FloatingPointError naming the first
  meta-step whose loss is not finite.
  """
  eval_every = config.get("eval_every", 0) if on_boundary else 0
  compiled, compile_s = {}, 0.0

  def program(n):
    nonlocal compile_s
    if n not in compiled:
      t0 = time.perf_counter()
      compiled[n] = make_train_chunk(meta_step, n).lower(state, data).compile()
      compile_s += time.perf_counter() - t0
    return compiled[n]

  t_start = time.perf_counter()
  run_s, pending, extra_s = 0.0, [], 0.0
  bar = tqdm(total=config.num_steps, disable=not progress, unit="step", desc=desc)
  with open(metrics_path, "w") as metrics_file:
    for n, at in chunk_sizes(config.num_steps, config.steps_per_call,
                             (config.log_every, eval_every)):
      fn = program(n)
      first_step = int(state.step)
      t0 = time.perf_counter()
      state, metrics = fn(state, data)
      loss_T = np.asarray(metrics["loss"])  # blocks: timing and NaN check
      run_s += time.perf_counter() - t0
      bad = np.flatnonzero(~np.isfinite(loss_T))
      if bad.size:
        raise FloatingPointError(
            f"meta-training loss is {loss_T[bad[0]]} at meta-step "
            f"{first_step + bad[0] + 1} (algorithm={config.algorithm}, "
            f"inner_lr={config.inner_lr}, outer_lr={config.outer_lr}); "
            "training stopped, metrics.jsonl holds only finite steps. "
            "Lower the learning rates.")
      pending.append(loss_T)
      bar.update(n)
      bar.set_postfix(loss=f"{loss_T.mean():.4f}")
      row = {}
      if eval_every and (at % eval_every == 0 or at == config.num_steps):
        t0 = time.perf_counter()
        row.update(on_boundary(state))
        extra_s += time.perf_counter() - t0
      if at % config.log_every == 0 or at == config.num_steps or row:
        losses = np.concatenate(pending)
        pending = []
        row = {"step": at, "loss": float(losses.mean()),
               "loss_last": float(losses[-1]),
               "steps_per_sec": at / run_s if run_s > 0 else None,
               "elapsed_s": time.perf_counter() - t_start, **row}
        metrics_file.write(json.dumps(row) + "\n")
        metrics_file.flush()
  bar.close()
  return state, {"train_wall_s": time.perf_counter() - t_start,
                 "compile_s": compile_s, "run_s": run_s, "eval_s": extra_s,
                 "sec_per_meta_step": run_s / config.num_steps}
