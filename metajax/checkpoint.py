"""Checkpoints with orbax: save, keep the last N and the best, resume.

A checkpoint (WORKDIR/checkpoints/<step>/) holds two items:
  state  the whole `TrainState` (params, Meta-SGD's learned inner rates,
         optimizer state, step, PRNG key), saved with orbax's StandardSave
         (array files + JSON metadata: loading never unpickles, so a
         checkpoint cannot run code);
  meta   JSON: the run's config and bookkeeping (wall time so far).
The task sampler has no state of its own: step t draws its tasks with
fold_in(state.key, t), so (key, step) is the sampler state.

Saves are synchronous and atomic (orbax writes a temporary directory and
renames it when complete), so a crash or SIGKILL mid-save leaves the previous
checkpoint as the latest. Validation saves carry a score (higher is better);
the preservation policy keeps the last `keep` checkpoints plus the best-scoring
one. A checkpoint that cannot be read is moved aside to
WORKDIR/checkpoints.unreadable/ with a message, and the one before it is used.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import sys
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from metajax.config import ConfigError, base_for, upgrade_saved
from metajax.sharding import to_host

# Keys that may change when a run is resumed: they set how long it runs, what
# is logged / evaluated / kept, where data is read from or how the state is laid
# out over devices (restored into the new layout), not what it computes
# (cpu_devices changes the order of the meta-gradient's sums: loop.run notes it).
RESUMABLE_KEYS = frozenset({
    "num_steps", "steps_per_call", "log_every", "eval_every", "checkpoint_every",
    "keep_checkpoints", "plots", "data_dir", "manual_dir", "eval_tasks", "eval_shots",
    "on_nan", "param_sharding", "test_every_step", "cpu_devices", "eval_batch",
})
# The keys `python -m metajax.retest` may change: test-time only.
TEST_KEYS = ("eval_max_steps", "eval_inner_lr", "eval_query", "eval_tasks", "eval_batch",
             "eval_seed", "eval_shots", "imaml_eval_lam", "test_every_step", "data_dir",
             "manual_dir", "num_devices")
# Not resumable although they only evaluate: val_tasks, eval_max_steps,
# eval_inner_lr and eval_query set the validation score
# that ranks checkpoints, and scores of two protocols cannot be compared (the
# sinusoid's validation uses neither eval_max_steps nor eval_inner_lr, so a
# sinusoid run may change those two; resume_changes).


def config_diff(saved: dict, now: dict) -> dict[str, str]:
  """{key: "  key: saved -> now"} for every key whose value differs (JSON-normalised)."""
  norm = lambda d: json.loads(json.dumps(d, default=str))
  saved, now = norm(saved), norm(now)
  return {k: f"  {k}: {saved.get(k, '<absent>')!r} -> {now.get(k, '<absent>')!r}"
          for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)}


def resume_changes(saved: dict, now: dict, directory: str,
                   done_steps: Optional[int] = None) -> dict[str, str]:
  """{key: diff line} of what `now` changes beyond RESUMABLE_KEYS (empty: resumable).

  A key the saved config lacks (added to metajax after the run began) counts
  as unchanged when `now` has it at its default, which is what the run used.
  num_steps may always change under a constant outer rate; under a schedule
  (defined by num_steps) only to `done_steps`, the meta-step of the checkpoint
  being resumed: the run then ends there and is tested, taking no step of a
  changed schedule. Raises ConfigError for a run no config can resume.
  """
  if saved.get("inner_optimizer") == "adam" and "carry_inner_adam" not in saved:
    raise ConfigError(
        f"{directory} holds a run with inner_optimizer='adam' checkpointed by an older "
        "metajax, whose inner Adam used beta2 = 0.99 and a fresh state per task (now "
        "beta2 = 0.999, as Reptile's reference code); resuming it would mix the two. "
        "Start it again in a new --workdir.")
  # Both may be a saved config (retest compares a run's config.json with its checkpoint's).
  saved, now = upgrade_saved(saved), upgrade_saved(now)
  base = base_for(now)
  for key, value in now.items():
    if key not in saved and key in base and value == base[key]:
      saved[key] = value
  changed = {k: line for k, line in config_diff(saved, now).items()
             if k not in RESUMABLE_KEYS}
  if now.get("task", "sinusoid") == "sinusoid":
    # The sinusoid's validation adapts for inner_steps at the training rate
    # (evaluate.make_validator): these two change only the final test.
    for key in ("eval_max_steps", "eval_inner_lr"):
      changed.pop(key, None)
  if "remat" in changed:
    # Compare what runs: "auto" is "off" for first order, one inner step or a
    # GPU, so a run saved with "off" (or remat=False) resumes under it there.
    modes = [_remat_mode(c) for c in (saved, now)]
    if modes[0] == modes[1]:
      del changed["remat"]
    else:
      auto = (f"{modes[0]!r} -> {modes[1]!r} on this backend; "
              if "auto" in (saved.get("remat"), now.get("remat")) else "")
      changed["remat"] += (f" ({auto}--config.remat={saved.get('remat')} resumes the run as "
                           "it was computed)")
  if (saved.get("num_steps") != now.get("num_steps")
      and now.get("outer_lr_schedule", "constant") != "constant"
      and (done_steps is None or now.get("num_steps") != done_steps)):
    end = "" if done_steps is None else (
        f"; num_steps={done_steps} ends the run at its checkpoint of meta-step "
        f"{done_steps} and tests it")
    changed["num_steps"] = (f"  num_steps: {saved.get('num_steps')!r} -> "
                            f"{now.get('num_steps')!r} (the {now['outer_lr_schedule']!r} "
                            f"learning-rate schedule is defined by num_steps{end})")
  return changed


def _remat_mode(config: dict) -> str:
  """The remat mode a saved or current config's inner loop runs on this backend
  (MAML++: per phase, e.g. "off then dots"), from the Algorithm training builds
  of it; its `remat` value as it is where no Algorithm can be built (an unknown
  algorithm, a missing key)."""
  import ml_collections

  from metajax.algorithms import Algorithm  # jax-heavy; only for a changed remat
  try:
    return Algorithm.from_config(ml_collections.ConfigDict(config)).remat_mode
  except (ValueError, TypeError, AttributeError, KeyError):
    return repr(config.get("remat"))


def check_resumable(saved: dict, now: dict, directory: str,
                    done_steps: Optional[int] = None) -> None:
  """Raises ConfigError if `now` changes anything but RESUMABLE_KEYS
  (`resume_changes`), with the diff."""
  changed = resume_changes(saved, now, directory, done_steps)
  if changed:
    retest = (f"\nTo test this run under another test-time protocol without training it "
              f"again: python -m metajax.retest --workdir {os.path.dirname(directory)} "
              + " ".join(f"--config.{k}=..." for k in sorted(changed))
              if set(changed) <= set(TEST_KEYS) - {"num_devices"} else "")
    raise ConfigError(
        f"{directory} holds a run with a different config; resuming it would change "
        "what it computes:\n" + "\n".join(changed.values()) + "\nUse a new --workdir, or "
        f"undo these changes. Keys that may change on resume: "
        f"{', '.join(sorted(RESUMABLE_KEYS))}" + retest)


def _not_the_missing_metrics_warning(record) -> bool:
  # Saves between validations carry no score by design; orbax warns at each.
  return "did not provide metrics" not in record.getMessage()


class Checkpoints:
  """The checkpoints of one run: `save`, `restore_latest`, `best_step`, `restore`."""

  def __init__(self, directory: str, *, keep: int = 3, read_only: bool = False):
    """read_only: never writes, deletes or tidies anything in `directory` (e.g.
    re-testing a run whose training may still be saving there)."""
    self.directory = os.path.abspath(directory)
    absl_log = logging.getLogger("absl")
    if _not_the_missing_metrics_warning not in absl_log.filters:
      absl_log.addFilter(_not_the_missing_metrics_warning)
    policy = pp.AnyPreservationPolicy([
        pp.LatestN(n=keep),
        pp.BestN(get_metric_fn=lambda m: m["score"], n=1,
                 keep_checkpoints_without_metrics=False)])
    self._manager = ocp.CheckpointManager(
        self.directory, item_names=("state", "meta"),
        options=ocp.CheckpointManagerOptions(
            preservation_policy=policy, enable_async_checkpointing=False,
            # best_fn makes orbax store each save's metrics (the policy ranks them).
            best_fn=lambda m: m["score"], best_mode="max", read_only=read_only,
            cleanup_tmp_directories=not read_only, create=not read_only))

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, state, meta: dict, score: Optional[float] = None) -> None:
    """Saves `state` at its step; `score` (higher is better) ranks it for 'best'.
    A non-finite score ranks lowest (-inf): NaN would compare as neither better
    nor worse, and the retention could then delete the real best."""
    step = int(to_host(state.step))
    if score is not None and not math.isfinite(score):
      score = -math.inf
    if step in self._manager.all_steps():
      return  # already saved (e.g. the final step of a resumed, finished run)
    self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(_on_disk(state)),
                                      meta=ocp.args.JsonSave(meta)),
        metrics=None if score is None else {"score": float(score)})
    self._manager.wait_until_finished()

  def _read(self, step: int, template=None, meta: bool = True) -> dict:
    """{"state", "meta"} of `step`: the state only with a template, meta if asked."""
    items = {}
    if template is not None:
      items["state"] = ocp.args.StandardRestore(jax.tree.map(
          lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
          _on_disk(template)))
    if meta:
      items["meta"] = ocp.args.JsonRestore()
    out = dict(self._manager.restore(step, args=ocp.args.Composite(**items)))
    if template is not None:
      out["state"] = template.replace(**out["state"])
    return out

  def restore_latest(self, template, check_meta=None) -> Optional[tuple[Any, dict]]:
    """(state, meta) of the newest readable checkpoint, or None if there is none.

    `template` is a state with the right structure, shapes and shardings.
    `check_meta(meta, step)` runs before the arrays are read (e.g. the config check;
    its errors propagate). An unreadable checkpoint is reported, moved aside,
    and the previous one tried.
    """
    tried = self.steps()
    for step in reversed(tried):
      try:
        meta = self._read(step)["meta"]
      except MemoryError:
        raise
      except Exception as e:  # orbax raises many types for bad files
        self._set_aside(step, e)
        continue
      if check_meta is not None:
        check_meta(meta, step)
      try:  # the config is read and checked already: only the arrays now
        return self._read(step, template, meta=False)["state"], meta
      except MemoryError:
        raise
      except Exception as e:  # orbax / tensorstore raise many types for bad files
        self._set_aside(step, e)
    if tried:  # never silently restart a run whose every checkpoint failed
      raise ConfigError(
          f"none of the checkpoints {tried} in {self.directory} could be read (each is "
          f"now in {self.directory}.unreadable/, with the error printed above); fix the "
          "cause and move them back, or use a new --workdir")
    return None

  def _set_aside(self, step: int, e: Exception) -> None:
    aside = os.path.join(self.directory + ".unreadable", str(step))
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(aside), exist_ok=True)
      shutil.rmtree(aside, ignore_errors=True)
      shutil.move(os.path.join(self.directory, str(step)), aside)
    first_line = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
    print(f"warning: checkpoint {self.directory}/{step} is unreadable "
          f"({type(e).__name__}: {first_line}); moved to {aside}; "
          "trying the previous one", file=sys.stderr)
    self._manager.reload()

  def best_step(self) -> Optional[int]:
    scored = [(m["score"], s) for s in self.steps()
              if (m := self._manager.metrics(s)) is not None and "score" in m]
    return max(scored)[1] if scored else None

  def metrics(self, step: int) -> Optional[dict]:
    return self._manager.metrics(step)

  def restore(self, step: int, template) -> tuple[Any, dict]:
    """(state, meta) of the checkpoint at `step` (`template`: see restore_latest)."""
    out = self._read(step, template)
    return out["state"], out["meta"]

  def close(self) -> None:
    self._manager.close()


def _on_disk(state) -> dict:
  """A TrainState's fields as they are saved: Reptile's carried inner-Adam state
  only where a run has one, so checkpoints from before it existed restore."""
  fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
  if fields.get("adam_carry", ()) is None:
    del fields["adam_carry"]
  return fields


def load_arrays(step_dir: str):
  """The saved TrainState of one checkpoint (WORKDIR/checkpoints/<step>) as a
  tree of numpy arrays on this host, whatever devices or hosts saved it. For
  inspecting and comparing runs; training resumes through `Checkpoints`."""
  path = os.path.join(os.path.abspath(step_dir), "state")
  checkpointer = ocp.StandardCheckpointer()
  tree = checkpointer.metadata(path)
  tree = getattr(tree, "item_metadata", tree)  # StepMetadata -> tree metadata
  tree = getattr(tree, "tree", tree)
  here = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
  abstract = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=here), tree)
  return jax.tree.map(np.asarray, checkpointer.restore(path, abstract))
