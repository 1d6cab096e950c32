"""Figures: adaptation on one task (MAML Fig. 2), the meta-training curve, and
validation accuracy of several runs against meta-steps and wall-clock minutes.

  python -m metajax.plots compare.png runs/mini_5w1s_maml runs/mini_5w1s_fomaml
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402

from metajax.algorithms import Algorithm, inner_mask  # noqa: E402
from metajax.evaluate import test_time_objective, test_time_rate  # noqa: E402
from metajax.inner import inner_loop  # noqa: E402
from metajax.tasks.sinusoid import sine  # noqa: E402


def plot_adaptation(path, config, algo: Algorithm, problem, meta_params,
                    *, k_shot=None, step_counts=(1, 10)):
  """True curve, K support points, prediction before and after 1 and 10 steps."""
  k_shot = k_shot or config.k_shot
  key = jax.random.PRNGKey(config.eval_seed + 1)
  task = jax.tree.map(lambda a: a[0], problem.sample_tasks(
      key, meta_batch=1, k_shot=k_shot, k_query=1))
  params = meta_params["params"]
  lr, lr_per_step = test_time_rate(  # as in evaluation
      algo, meta_params, config.eval_inner_lr if config.eval_inner_lr > 0 else None)
  x_Nx1 = jnp.linspace(*config.x_range, 200)[:, None]
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot(x_Nx1[:, 0], sine(x_Nx1[:, 0], task["amplitude"], task["phase"]),
          "r", label="ground truth")
  ax.plot(x_Nx1[:, 0], problem.predict(params, x_Nx1)[:, 0], ":",
          color="0.4", label="pre-update")
  for steps, style in zip(step_counts, ("--", "-")):
    loss = test_time_objective(algo, problem.loss_fn, params)  # as in evaluation
    phi = inner_loop(loss, params, task["support"], steps=steps, lr=lr,
                     mask=inner_mask(algo, params), optimizer=algo.inner_optimizer,
                     lr_per_step=lr_per_step, adam_carry=meta_params.get("adam_carry"))[0]
    ax.plot(x_Nx1[:, 0], problem.predict(phi, x_Nx1)[:, 0], style,
            color="tab:green", label=f"{steps} grad step{'s' * (steps > 1)}")
  xs, ys = task["support"]
  ax.plot(xs[:, 0], ys[:, 0], "^", color="purple", label=f"{k_shot} support points")
  ax.set_title(f"{algo.name}, K={k_shot}")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _read_metrics(metrics_path):
  """The rows of a metrics.jsonl and those of them that carry a validation
  (not those whose validation diverged: val_accuracy null)."""
  with open(metrics_path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return rows, [r for r in rows if r.get("val_accuracy") is not None]


def plot_curves(path, metrics_path):
  """Meta-training query loss against meta-step, from metrics.jsonl."""
  rows, val = _read_metrics(metrics_path)
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot([r["step"] for r in rows], [r["loss"] for r in rows])
  ax.set_xlabel("meta-step")
  ax.set_ylabel("mean post-adaptation query loss")
  ax.set_yscale("log")
  if val:  # few-shot runs: validation accuracy on a second axis
    ax2 = ax.twinx()
    ax2.errorbar([r["step"] for r in val], [100 * r["val_accuracy"] for r in val],
                 yerr=[100 * r["val_ci95"] for r in val], color="tab:orange",
                 marker="o", ms=3, capsize=2, label="validation accuracy")
    ax2.set_ylabel("validation accuracy (%)", color="tab:orange")
  ax.set_title(os.path.basename(os.path.dirname(os.path.abspath(path))))
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def validation_curves(workdir):
  """(steps, minutes, accuracy %, ci95 %) of a run's validations, from its
  metrics.jsonl; minutes are `elapsed_s` (wall clock over all legs of the run,
  validations included) / 60."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: pass a training workdir (a folder "
                            "holding the metrics.jsonl that metajax.train writes)")
  rows, val = _read_metrics(path)
  if not val and any("val_accuracy" in r for r in rows):
    raise ValueError(f"every validation in {path} diverged (val_accuracy null): nothing "
                     "to plot")
  if not val:
    raise ValueError(f"{path} has no validation rows (val_accuracy): train with "
                     "--config.eval_every > 0 on a few-shot data set")
  return ([r["step"] for r in val], [r["elapsed_s"] / 60 for r in val],
          [100 * r["val_accuracy"] for r in val], [100 * r["val_ci95"] for r in val])


def plot_validation(path, workdirs):
  """Validation accuracy ± 95% CI of each run against meta-step (left) and
  against minutes of wall clock (right): the two ways to compare, e.g., exact
  second-order MAML with first-order MAML."""
  fig, (by_step, by_min) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
  for workdir in workdirs:
    steps, minutes, acc, ci = validation_curves(workdir)
    label = os.path.basename(os.path.normpath(workdir))
    for ax, x in ((by_step, steps), (by_min, minutes)):
      ax.errorbar(x, acc, yerr=ci, marker="o", ms=3, capsize=2, label=label)
  by_step.set_xlabel("meta-step")
  by_min.set_xlabel("wall-clock minutes (validations included)")
  by_step.set_ylabel("validation accuracy (%)")
  by_step.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


if __name__ == "__main__":
  if len(sys.argv) < 3:
    sys.exit("usage: python -m metajax.plots OUT.png WORKDIR [WORKDIR ...]")
  try:
    plot_validation(sys.argv[1], sys.argv[2:])
  except (FileNotFoundError, ValueError) as e:  # the message names the run and the fix
    sys.exit(f"error: {e}")
  print(f"wrote {sys.argv[1]}")
