"""Soak benchmark: a long run with periodic validation and checkpoints, to
show that host memory stays flat.

  python -m metajax.bench.soak [--steps 20000] [--workdir runs/soak]
      [--config experiments/sine_maml.py] [--config.KEY=VALUE ...]

Trains the config for `--steps` meta-steps with validation and a checkpoint
every `--every` steps and a metrics row (with the process's resident memory)
every `--log_every`. Memory growth is measured after warm-up (the first 10%
of steps: compilation, first saves): (max RSS after warm-up - RSS at the end
of warm-up) / RSS at the end of warm-up. Deletes WORKDIR first (only an
earlier soak's, with its soak.json: any other non-empty folder is refused),
then writes WORKDIR/soak.json and WORKDIR/soak.png; exits 1 if the growth is
5% or more.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

GROWTH_LIMIT = 0.05
# What a soak (a training run) leaves in its workdir; anything else there is
# the user's, so the workdir is not deleted.
SOAK_FILES = frozenset({"config.json", "metrics.jsonl", "checkpoints", "eval.json",
                        "soak.json", "soak.png"})


def check_workdir(workdir: str) -> None:
  """Raises ValueError unless `workdir` is absent, empty, or an earlier soak's
  (its soak.json and nothing a soak does not write)."""
  if not os.path.isdir(workdir):
    if os.path.exists(workdir):
      raise ValueError(f"--workdir {workdir} is a file, not a folder")
    return
  names = set(os.listdir(workdir))
  if names and "soak.json" not in names:
    raise ValueError(
        f"--workdir {workdir} is not empty and holds no soak.json (not an earlier soak's); "
        "a soak deletes its workdir first, so give it a new or empty folder")
  other = sorted(names - SOAK_FILES)
  if other:
    raise ValueError(
        f"--workdir {workdir} holds files a soak does not write ({', '.join(other[:5])}"
        f"{', ...' if len(other) > 5 else ''}); a soak deletes its workdir first, so give it "
        "a new or empty folder")


def check_schedule(steps: int, log_every: int) -> None:
  """Raises ValueError unless metrics rows fall both in and after the warm-up."""
  warmup = steps // 10
  if log_every < 1 or log_every > warmup:
    raise ValueError(
        f"--steps {steps} has a warm-up of {warmup} meta-steps (10%), which needs at least "
        f"one metrics row, but --log_every is {log_every}: use --steps >= {10 * max(log_every, 1)}"
        f" or --log_every <= {max(warmup, 1)}")


def memory_growth(rows, warmup_step: int) -> dict:
  """RSS growth after `warmup_step` from metrics rows with "step" and "rss_mb"."""
  rows = [r for r in rows if r.get("rss_mb") is not None]
  before = [r for r in rows if r["step"] <= warmup_step]
  after = [r for r in rows if r["step"] > warmup_step]
  if not before or not after:
    raise ValueError("need metrics rows with rss_mb both before and after warm-up")
  base = before[-1]["rss_mb"]
  peak = max(r["rss_mb"] for r in after)
  return {"warmup_step": warmup_step, "rss_at_warmup_mb": base,
          "max_rss_after_warmup_mb": peak, "final_rss_mb": after[-1]["rss_mb"],
          "growth": (peak - base) / base}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--steps", type=int, default=20_000)
  ap.add_argument("--every", type=int, default=1000,
                  help="meta-steps between validations and checkpoints")
  ap.add_argument("--log_every", type=int, default=100)
  ap.add_argument("--workdir", default="runs/soak",
                  help="deleted first if it exists: a soak starts from scratch")
  ap.add_argument("--config", default=os.path.join(
      os.path.dirname(__file__), "..", "..", "experiments", "sine_maml.py"))
  args, rest = ap.parse_known_args(argv)
  try:
    check_schedule(args.steps, args.log_every)
    check_workdir(args.workdir)
  except ValueError as e:
    ap.error(str(e))

  from metajax.train import config_overrides, load_config, train_and_evaluate
  config = load_config(args.config, config_overrides(ap, rest))
  config.update(num_steps=args.steps, eval_every=args.every, checkpoint_every=args.every,
                log_every=args.log_every, steps_per_call=min(config.steps_per_call,
                                                             args.log_every),
                plots=False)
  shutil.rmtree(args.workdir, ignore_errors=True)  # a soak starts from scratch
  t0 = time.time()
  result = train_and_evaluate(config, args.workdir, progress=False)
  wall_s = time.time() - t0
  with open(os.path.join(args.workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  growth = memory_growth(rows, warmup_step=args.steps // 10)
  saves = len([r for r in rows if "val_mse" in r or "val_accuracy" in r])
  out = {"config": args.config, "task": config.task, "algorithm": config.algorithm,
         "steps": args.steps, "validations": saves,
         "checkpoint_every": args.every, "wall_s": wall_s,
         "sec_per_meta_step": result["sec_per_meta_step"], **growth,
         "passed": growth["growth"] < GROWTH_LIMIT,
         "rss_mb_by_step": [[r["step"], r["rss_mb"]] for r in rows]}
  with open(os.path.join(args.workdir, "soak.json"), "w") as f:
    json.dump(out, f, indent=1)
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(*zip(*out["rss_mb_by_step"]))
    ax.axvline(growth["warmup_step"], color="gray", ls=":", label="end of warm-up")
    ax.set_xlabel("meta-step")
    ax.set_ylabel("resident memory (MB)")
    ax.set_title(f"soak: {config.algorithm} {config.task}, validation + checkpoint "
                 f"every {args.every}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.workdir, "soak.png"), dpi=100)
  except ImportError:
    pass
  print(f"{args.steps} meta-steps in {wall_s:.0f} s, {saves} validations + checkpoints; "
        f"RSS {growth['rss_at_warmup_mb']:.0f} MB after warm-up (step "
        f"{growth['warmup_step']}), max {growth['max_rss_after_warmup_mb']:.0f} MB after: "
        f"growth {100 * growth['growth']:.2f}% (limit {100 * GROWTH_LIMIT:.0f}%)")
  return 0 if out["passed"] else 1


if __name__ == "__main__":
  sys.exit(main())
