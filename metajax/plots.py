"""Figures: adaptation on one task (MAML Fig. 2) and the meta-training curve."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402

from metajax.algorithms import Algorithm, inner_lr, inner_mask  # noqa: E402
from metajax.evaluate import test_time_objective  # noqa: E402
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
  lr = inner_lr(algo, meta_params)
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
                     lr_per_step=algo.lslr, adam_carry=meta_params.get("adam_carry"))[0]
    ax.plot(x_Nx1[:, 0], problem.predict(phi, x_Nx1)[:, 0], style,
            color="tab:green", label=f"{steps} grad step{'s' * (steps > 1)}")
  xs, ys = task["support"]
  ax.plot(xs[:, 0], ys[:, 0], "^", color="purple", label=f"{k_shot} support points")
  ax.set_title(f"{algo.name}, K={k_shot}")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_curves(path, metrics_path):
  """Meta-training query loss against meta-step, from metrics.jsonl."""
  with open(metrics_path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot([r["step"] for r in rows], [r["loss"] for r in rows])
  ax.set_xlabel("meta-step")
  ax.set_ylabel("mean post-adaptation query loss")
  ax.set_yscale("log")
  val = [r for r in rows if r.get("val_accuracy") is not None]
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
