"""Collects eval.json files under a folder into a markdown table.

  python -m metajax.results runs/sine_table      # sinusoid runs
  python -m metajax.results runs                 # few-shot runs too: ours beside the paper's
"""

from __future__ import annotations

import glob
import json
import os
import sys


def _cell(r, step):
  m, c = r["mse"][step], r["ci95"][step]
  return "diverged" if m is None else f"{m:.3f} ± {c:.3f}"


def sinusoid_table(root: str) -> str:
  rows = []
  for path in sorted(glob.glob(os.path.join(root, "*", "eval.json"))):
    with open(path) as f:
      e = json.load(f)
    if "by_k_shot" not in e:  # a few-shot run: fewshot_table's
      continue
    k = str(e["k_shot_train"])
    r = e["by_k_shot"].get(k)
    if r is None:
      continue
    rows.append((e["algorithm"], int(k), os.path.basename(os.path.dirname(path)),
                 _cell(r, 1), _cell(r, min(10, len(r["mse"]) - 1)),
                 f"{1e3 * e['sec_per_meta_step']:.3f}", f"{e['compile_s']:.1f}",
                 f"{e['train_wall_s']:.0f}", e["num_steps"]))
  order = ["maml", "fomaml", "metasgd", "anil", "reptile"]
  rows.sort(key=lambda r: (order.index(r[0]) if r[0] in order else 99, r[1]))
  out = ["| algorithm | K (train = test) | run | MSE after 1 step ± 95% CI | "
         "after 10 steps | ms / meta-step | compile s | train wall s | meta-steps |",
         "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
  out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(out)


def fewshot_table(root: str) -> str:
  """Test accuracy of every few-shot run under `root`, beside the published
  number of its cell (metajax.papers; labelled "paper")."""
  from metajax.papers import PUBLISHED, format_published
  rows = []
  for path in sorted(glob.glob(os.path.join(root, "*", "eval.json"))):
    with open(path) as f:
      e = json.load(f)
    if e.get("metric") != "accuracy":
      continue
    paper = PUBLISHED.get((e["algorithm"], e["dataset"], e["ways"], e["k_shot"]))
    rows.append((
        e["algorithm"], e["dataset"], f"{e['ways']}w{e['k_shot']}s",
        os.path.basename(os.path.dirname(path)),
        "diverged" if e["final_accuracy"] is None
        else f"{100 * e['final_accuracy']:.2f} ± {100 * e['final_ci95']:.2f}",
        e["inner_steps_test"], e["iterations"],
        "-" if e["best_step"] is None else e["best_step"],
        f"{e['sec_per_meta_step']:.3f}", f"{e['train_wall_s'] / 60:.0f}",
        format_published(paper)))
  out = ["| algorithm | data set | cell | run | ours: test accuracy % ± 95% CI | "
         "test steps | meta-steps | best val step | s / meta-step | train min | "
         "**paper** % |",
         "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
  out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(out)


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  root = argv[0] if argv else "runs"
  # A table only where it has rows (header and separator are two lines).
  tables = [t for t in (sinusoid_table(root), fewshot_table(root)) if t.count("\n") > 1]
  if not tables:
    print(f"error: no finished run under {root} (a folder of workdirs, each with the "
          "eval.json that python -m metajax.train writes at the end)", file=sys.stderr)
    return 1
  print("\n\n".join(tables))
  return 0


if __name__ == "__main__":
  sys.exit(main())
