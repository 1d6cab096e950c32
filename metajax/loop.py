"""The meta-training loop shared by every task: chunks, logging, validation,
checkpoints, resume and the NaN policy.

`run(...)` calls the jitted `make_train_chunk` program for `config.num_steps`
meta-steps, `steps_per_call` at a time, never crossing a logging, validation
or checkpoint boundary. It writes one metrics.jsonl row per `log_every`
steps, calls `on_boundary(state)` every `eval_every` steps (and at the end)
and saves a checkpoint every `checkpoint_every` steps, at every validation and
at the end. If the checkpoint directory already holds a run with the same
config, it resumes from the newest readable checkpoint and the result is
bitwise the same as an uninterrupted run (tested with SIGKILL).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Callable, Optional

import jax
import numpy as np
from tqdm import tqdm

from metajax.checkpoint import Checkpoints, check_resumable, resume_changes
from metajax.config import ConfigError
from metajax.sharding import to_host
from metajax.step import compile_lowered, make_train_chunk

# on_nan="skip" still stops after this many non-finite steps in a row: by
# then the run has diverged, skipping is not recovering it.
MAX_CONSECUTIVE_SKIPS = 100
# Seconds a run reports (and checkpoints): wall clock, meta-steps alone,
# compiling, validating.
SESSION_TIMES = ("train_wall_s", "run_s", "compile_s", "eval_s")


def rss_mb():
  """This process's resident memory now (Linux /proc; None elsewhere)."""
  try:
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
  except (OSError, ValueError, IndexError):
    return None


def chunk_sizes(num_steps: int, steps_per_call: int, periods, start: int = 0):
  """(n, at_boundary_step) pairs from `start`: chunks that never cross a
  multiple of any period."""
  periods = [p for p in periods if p]
  step = start
  while step < num_steps:
    nxt = min([(step // p + 1) * p for p in periods] + [num_steps, step + steps_per_call])
    yield nxt - step, nxt
    step = nxt


def _metrics_rows_until(path: str, step: int) -> list[str]:
  """The metrics.jsonl lines of steps <= `step` (what a resumed run keeps)."""
  if not os.path.exists(path):
    return []
  keep = []
  with open(path) as f:
    for line in f:
      try:
        if json.loads(line)["step"] <= step:
          keep.append(line if line.endswith("\n") else line + "\n")
      except (ValueError, KeyError):
        break  # a line cut short by a crash: everything after it is redone
  return keep


def _what_now(config, checkpoints: Checkpoints, *, suggest_skip: bool = True) -> str:
  steps = checkpoints.steps()
  last = (f"the last good checkpoint is meta-step {steps[-1]} in {checkpoints.directory} "
          "and rerunning the command resumes from it" if steps else "no checkpoint was saved yet")
  skip = "Resume with --config.on_nan=skip to skip such updates, or lower" if suggest_skip \
      else "Lower"
  return (f"Training stopped; {last}. {skip} the learning rates (inner_lr={config.inner_lr}, "
          f"outer_lr={config.outer_lr}) in a new --workdir.")


# Keys that change how a run is computed, not what: a run that crashed before
# its first checkpoint may be restarted with them changed (e.g. after running
# out of memory), over its own metrics.
HOW_KEYS = frozenset({"unroll", "remat", "batching", "task_chunk", "conv_impl", "num_devices",
                      "param_sharding", "steps_per_call"})


def _placement(state) -> str:
  """Where `state` lives, e.g. "4 cpu devices" (what a resume should match)."""
  sharding = getattr(jax.tree.leaves(state)[0], "sharding", None)
  devices = sharding.device_set if sharding is not None else set(jax.devices()[:1])
  platform = next(iter(devices)).platform
  return f"{len(devices)} {platform} device{'s' * (len(devices) != 1)}"


def _check_no_other_run(workdir: str, config_dict: dict) -> None:
  """Raises ConfigError if `workdir` holds the metrics of a run with another
  config (one that could not be resumed into this one) but no checkpoint:
  starting here would overwrite them."""
  config_path = os.path.join(workdir, "config.json")
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  if not (os.path.isfile(metrics_path) and os.path.getsize(metrics_path)):
    return
  try:
    with open(config_path) as f:
      saved = json.load(f)
  except (OSError, ValueError):
    return  # no readable config: nothing to compare with
  try:
    changed = resume_changes(saved, config_dict, workdir)
  except ConfigError as e:  # a run no config can resume
    changed = {"": str(e)}
  if set(changed) <= HOW_KEYS:
    return  # the same experiment (computed another way, e.g. with less memory)
  raise ConfigError(
      f"{workdir} holds the metrics of a run with a different config and no checkpoint to "
      f"resume; starting here would overwrite them:\n" + "\n".join(changed.values())
      + f"\nUse a new --workdir, or delete {workdir} to start over there.")


def replace_file(path: str, text: str) -> None:
  """Writes `path` whole or not at all (a crash mid-write leaves the old file)."""
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())  # the data on disk before the rename, even after a power cut
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def run(config, state, meta_step, workdir: str, checkpoints: Checkpoints, *,
        data=None, on_boundary: Optional[Callable] = None, progress: bool = True,
        desc: str = ""):
  """Meta-trains from `state` (or resumes from `checkpoints`); returns (state, stats).

  `state` must already be placed (replicated over the mesh); it is also the
  template checkpoints are restored into.

  `on_boundary(state) -> dict` runs every `config.eval_every` steps (when > 0)
  and at the end; what it returns is added to that step's metrics row, and its
  "score" entry (higher is better) ranks the checkpoint saved there. Raises
  FloatingPointError naming the first meta-step whose loss or meta-gradient is
  not finite (on_nan="stop"; nothing from its chunk of steps is checkpointed),
  or the 100th such step in a row (on_nan="skip").
  """
  eval_every = config.get("eval_every", 0) if on_boundary else 0
  config_dict = config.to_dict()
  restored = checkpoints.restore_latest(
      state, check_meta=lambda meta, step: check_resumable(
          meta["config"], config_dict, checkpoints.directory, done_steps=step))
  # Times of a resumed run add up over its sessions (each compiles anew):
  # `prior` holds those of the sessions before this one.
  start, prior = 0, dict.fromkeys(SESSION_TIMES, 0.0)
  placed_on = _placement(state)
  in_a_row = 0  # consecutive skipped (non-finite) meta-steps, carried over resumes
  if restored is not None:
    state, meta = restored
    start = int(to_host(state.step))
    in_a_row = int(meta.get("nan_in_a_row", 0))
    saved_on = meta.get("placement")
    if saved_on is not None and saved_on != placed_on and progress:
      # Allowed (another machine), but the meta-gradient's sums run in another
      # order, so the run is no longer bitwise equal to an uninterrupted one.
      print(f"note: the checkpoint was made on {saved_on} and this leg runs on {placed_on}: "
            "the result will not be bitwise identical to an uninterrupted run",
            file=sys.stderr)
    if start > config.num_steps:
      raise ConfigError(
          f"num_steps={config.num_steps} is less than the {start} meta-steps already "
          f"done in {checkpoints.directory}; use num_steps >= {start} (or a new --workdir)")
    # compile_s and eval_s are absent from older checkpoints.
    prior = {k: float(meta.get(k, 0.0)) for k in SESSION_TIMES}
    if progress:
      print(f"resuming from the checkpoint of meta-step {start} in {checkpoints.directory}")
  else:
    _check_no_other_run(workdir, config_dict)
  primary = jax.process_index() == 0
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  if primary:  # after the resume check: a refused resume leaves the workdir as it was
    replace_file(os.path.join(workdir, "config.json"),
                 json.dumps(config_dict, indent=1, default=str))
    # The rows up to the resumed step (rows past it would be logged twice).
    replace_file(metrics_path, "".join(_metrics_rows_until(metrics_path, start))
                 if start else "")

  compiled, compile_s = {}, 0.0

  def program(n):
    nonlocal compile_s
    if n not in compiled:
      t0 = time.perf_counter()
      compiled[n] = compile_lowered(make_train_chunk(meta_step, n).lower(state, data))
      compile_s += time.perf_counter() - t0
    return compiled[n]

  t_start = time.perf_counter()
  run_s, pending, skipped, eval_s = 0.0, [], 0, 0.0
  if restored is not None and "unlogged" in meta:
    pending = [np.asarray(meta["unlogged"]["losses"], meta["unlogged"]["dtype"])]
    skipped = int(meta["unlogged"]["skipped"])

  def totals(wall_s):
    session = {"train_wall_s": wall_s, "run_s": run_s, "compile_s": compile_s,
               "eval_s": eval_s}
    return {k: prior[k] + session[k] for k in SESSION_TIMES}

  bar = tqdm(total=config.num_steps, initial=min(start, config.num_steps),
             disable=not (progress and primary), unit="step", desc=desc)
  metrics_file = open(metrics_path, "a") if primary else None
  try:
    for n, at in chunk_sizes(config.num_steps, config.steps_per_call,
                             (config.log_every, eval_every, config.checkpoint_every),
                             start=start):
      fn = program(n)
      first_step = int(to_host(state.step))
      t0 = time.perf_counter()
      state, metrics = fn(state, data)
      loss_T = to_host(metrics["loss"])  # blocks: timing and NaN check
      run_s += time.perf_counter() - t0
      # Both policies also catch a finite loss whose meta-gradient is not
      # finite: "stop" must not checkpoint the parameters such a step made.
      if config.on_nan == "skip":
        bad = to_host(metrics["skipped"])
      else:
        bad = ~np.isfinite(loss_T)
        if "finite" in metrics:
          bad |= ~to_host(metrics["finite"])
      if bad.any() and config.on_nan == "stop":
        i = int(np.flatnonzero(bad)[0])
        what = (f"meta-training loss is {loss_T[i]}" if not np.isfinite(loss_T[i]) else
                f"meta-gradient is not finite (loss {loss_T[i]:.6g})")
        raise FloatingPointError(
            f"{what} at meta-step {first_step + i + 1} "
            f"(algorithm={config.algorithm}). " + _what_now(config, checkpoints))
      for i, b in enumerate(bad):
        in_a_row = in_a_row + 1 if b else 0
        if in_a_row >= MAX_CONSECUTIVE_SKIPS:
          raise FloatingPointError(
              f"meta-steps {first_step + i + 2 - in_a_row} to {first_step + i + 1} all had "
              f"a non-finite loss and were skipped (on_nan=skip): the run has diverged. "
              + _what_now(config, checkpoints, suggest_skip=False))
      skipped += int(bad.sum())
      pending.append(loss_T[~bad])
      bar.update(n)
      if (~bad).any():
        bar.set_postfix(loss=f"{loss_T[~bad].mean():.4f}")
      row = {}
      at_end = at == config.num_steps
      if eval_every and (at % eval_every == 0 or at_end):
        t0 = time.perf_counter()
        row.update(on_boundary(state))
        eval_s += time.perf_counter() - t0
      score = row.pop("score", None)
      if at % config.log_every == 0 or at_end or row:
        losses = np.concatenate(pending)
        row = {"step": at,
               "loss": float(losses.mean()) if losses.size else None,
               "loss_last": float(losses[-1]) if losses.size else None,
               "steps_per_sec": (at - start) / run_s if run_s > 0 else None,
               "elapsed_s": prior["train_wall_s"] + time.perf_counter() - t_start,
               "rss_mb": rss_mb(),
               **({"skipped_steps": skipped} if config.on_nan == "skip" else {}), **row}
        if metrics_file:
          metrics_file.write(json.dumps(row) + "\n")
          metrics_file.flush()
        pending, skipped = [], 0
      if (config.checkpoint_every and at % config.checkpoint_every == 0) \
          or at_end or score is not None:
        # The losses not yet logged go with it, so that a resumed run logs the
        # rows an uninterrupted one would.
        losses = np.concatenate(pending) if pending else np.zeros(0, np.float32)
        checkpoints.save(state, {"config": config_dict, "placement": placed_on,
                                 "nan_in_a_row": in_a_row,
                                 "unlogged": {"losses": losses.tolist(),
                                              "dtype": str(losses.dtype),
                                              "skipped": skipped},
                                 **totals(time.perf_counter() - t_start)}, score=score)
  finally:
    bar.close()
    if metrics_file:
      metrics_file.close()
  times = totals(time.perf_counter() - t_start)
  return state, {**times, "sec_per_meta_step": times["run_s"] / config.num_steps,
                 "resumed_from_step": start if restored is not None else None}
