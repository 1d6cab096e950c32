"""Benchmark suite.

  python -m metajax.bench --suite paper [--out runs/bench] [--peers] [--iters 5]
  python -m metajax.bench --suite strategies --preset omni_5w1s_train
  python -m metajax.bench --table runs/bench/paper.jsonl

Suites:
  paper       MAML, FOMAML, Reptile, Meta-SGD, ANIL on sinusoid, Omniglot 5w1s,
              Omniglot 20w1s, mini-ImageNet 5w1s
  peers       second- and first-order MAML on the three image configs, metajax
              beside the PyTorch peers (needs the `bench` extra)
  steps       time and memory against inner steps 1..20, second vs first order,
              with and without remat (second order and MAML++ also with
              remat="dots": the matrix products kept), iMAML (implicit
              gradient, 5 CG steps) and MAML++ (second order with LSLR,
              per-step BN and the multi-step loss: its costliest phase)
              (Omniglot 5w1s, meta-batch 4); writes steps.png
  anil        ANIL on the three image configs, the head adapted on features
              computed once per task (metajax.anil) beside the masked inner
              loop over the whole model (features_once=False)
  strategies  the task-batching strategies and conv forms on Omniglot 5w1s
              (benchmark episodes, 15 query images per class) and on MAML's
              Omniglot training episodes (1 query image per class); on a CPU
              also the host split into 2 devices (cpu_devices=2)

Every cell runs in its own subprocess (peak memory is per cell). Writes
OUT/SUITE.jsonl (OUT/SUITE_PRESET_ALGO.jsonl when --preset/--algo pick
cells) and prints a markdown table; with peers, the ratio
metajax / peer from the same run.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys

from metajax.bench.presets import ALGORITHMS

IMAGE_PRESETS = ("omni_5w1s", "omni_20w1s", "mini_5w1s")


@functools.lru_cache(maxsize=None)
def _jax_backend() -> str:
  """JAX's default backend, asked in a child process: starting JAX here would
  hold an accelerator's memory (it preallocates) while the cells run."""
  p = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"],
                     capture_output=True, text=True, check=True)
  return p.stdout.strip().splitlines()[-1]


def suite_cells(suite: str, peers: bool):
  cells = []
  if suite == "paper":
    for preset in ("sine",) + IMAGE_PRESETS:
      for algo in ALGORITHMS:
        cell = {"impl": "metajax", "preset": preset, "algo": algo}
        if preset == "sine":
          cell["steps_per_call"] = 500
        cells.append(cell)
  elif suite == "peers":
    peers = True
    for preset in IMAGE_PRESETS:
      for algo in ("maml", "fomaml"):
        cells.append({"impl": "metajax", "preset": preset, "algo": algo})
  elif suite == "steps":
    for steps in (1, 2, 5, 10, 20):
      for algo in ("maml", "fomaml", "imaml", "mamlpp"):
        modes = {"maml": ("off", "dots", "full"), "fomaml": ("off", "full"),
                 "mamlpp": ("off", "dots")}
        for remat in modes.get(algo, ("off",)):
          cells.append({"impl": "metajax", "preset": "omni_5w1s_mb4", "algo": algo,
                        "steps": steps, "remat": remat})
  elif suite == "anil":
    for preset in IMAGE_PRESETS:
      for once in (True, False):
        cells.append({"impl": "metajax", "preset": preset, "algo": "anil",
                      "features_once": once})
  elif suite == "strategies":
    # The literal vmap over tasks (grouped convolutions on CPU) took 121 s per
    # step in the peer baselines; it is in the suite only off-CPU.
    choices = [("scan", 1, "winograd"), ("scan", 1, "im2col"), ("scan", 1, "hybrid"),
               ("scan", 1, "xla"), ("scan", 4, "im2col"), ("unroll", 1, "im2col")]
    if _jax_backend() != "cpu":
      choices += [("vmap", None, "xla"), ("vmap", None, "im2col"), ("vmap", None, "winograd")]
    for batching, chunk, conv in choices:
      cells.append({"impl": "metajax", "preset": "omni_5w1s", "algo": "maml",
                    "batching": batching, "chunk": chunk, "conv": conv})
    # MAML's Omniglot training episodes (1 query image per class): small tasks,
    # too few positions for Winograd's form (metajax.models), so "winograd" and
    # "im2col" are one program here: one cell per batching.
    for batching, chunk in (("scan", 1), ("scan", 8), ("vmap", None)):
      cells.append({"impl": "metajax", "preset": "omni_5w1s_train", "algo": "maml",
                    "batching": batching, "chunk": chunk, "conv": "winograd"})
    if _jax_backend() == "cpu":
      # The host CPU split into 2 JAX devices (cpu_devices): two streams of tasks.
      for preset in ("omni_5w1s", "omni_5w1s_train"):
        cells.append({"impl": "metajax", "preset": preset, "algo": "maml",
                      "batching": "scan", "chunk": 1, "conv": "winograd", "cpu_devices": 2})
  else:
    raise SystemExit(f"unknown suite {suite!r}; choose paper, peers, steps, anil or "
                     "strategies")
  if peers:
    for cell in [c for c in cells if c["preset"] in IMAGE_PRESETS]:
      for impl in ("torch-loop", "torch-func"):
        if cell["algo"] in ("maml", "fomaml") or (impl == "torch-loop"
                                                   and cell["algo"] == "reptile"):
          cells.append(dict(cell, impl=impl))
  return cells


def run_in_subprocess(cell: dict, timeout: int) -> dict:
  cmd = [sys.executable, "-m", "metajax.bench", "--cell", json.dumps(cell)]
  try:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return dict(cell, error=f"timed out after {timeout}s")
  lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
  if p.returncode or not lines:
    return dict(cell, error=(p.stderr.strip().splitlines() or ["no output"])[-1])
  return dict(cell, **json.loads(lines[-1]))


def _fmt(v, scale=1.0, digits=2):
  return "–" if v is None else f"{v * scale:.{digits}f}"


def _remat(row) -> str:
  """A row's remat mode; rows of an older metajax hold a bool (True: "full")."""
  remat = row.get("remat")
  return {True: "full", False: "off", None: "off"}.get(remat, remat)


def table(rows) -> str:
  out = ["| config | algo | impl | steps | remat | batching | median s | min–max s | "
         "compile s | peak RSS MB | run RSS MB | XLA temp MB | device peak MB | tasks/s | "
         "vs torch-loop | vs torch-func |",
         "|---|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  def key(r):
    # The backend too: a ratio only between cells on the same kind of device
    # (PyTorch says "cuda" where JAX says "gpu").
    backend = {"cuda": "gpu"}.get(r.get("backend"), r.get("backend"))
    # Not remat: the peers have none (a metajax row's ratio is to the same peers).
    return (r["preset"], r["algo"], r.get("steps"), backend)
  peer = {(key(r), r["impl"]): r for r in rows if "error" not in r}
  for r in rows:
    if "error" in r:
      out.append(f"| {r['preset']} | {r['algo']} | {r['impl']} | | | | error: "
                 f"{r['error'][:80]} | | | | | | | | | |")
      continue
    ratios = []
    for impl in ("torch-loop", "torch-func"):
      other = peer.get((key(r), impl))
      ratios.append(f"{r['median_s'] / other['median_s']:.2f}"
                    if other and r["impl"] == "metajax" else "–")
    algo = r["algo"] + (" (masked loop)" if r.get("features_once") is False else "")
    batching = "–" if r["impl"] != "metajax" else (
        f"{r.get('batching')}/{r.get('chunk') or '-'}/{r.get('conv') or '-'}"
        + (f" on {r['devices']} devices" if r.get("devices", 1) > 1 else ""))
    out.append(
        f"| {r['preset']} | {algo} | {r['impl']} | {r.get('steps')} | "
        f"{_remat(r) if r['impl'] == 'metajax' else '–'} | {batching} | {r['median_s']:.4f} | "
        f"{r['min_s']:.4f}–{r['max_s']:.4f} | {_fmt(r.get('compile_s'), 1, 1)} | "
        f"{_fmt(r.get('peak_rss_mb'), 1, 0)} | {_fmt(r.get('run_rss_mb'), 1, 0)} | "
        f"{_fmt(r.get('xla_temp_mb'), 1, 0)} | {_fmt(r.get('device_peak_mb'), 1, 0)} | "
        f"{_fmt(r.get('tasks_per_s'), 1, 1)} | {ratios[0]} | {ratios[1]} |")
  return "\n".join(out)


def plot_steps(rows, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
  names = {"maml": "2nd order", "fomaml": "1st order", "imaml": "iMAML", "mamlpp": "MAML++"}
  styles = {"maml": "-", "fomaml": "--", "imaml": ":", "mamlpp": "-."}
  suffix = {"off": "", "dots": " + remat (dots)", "full": " + remat"}
  for algo in names:
    for remat in suffix:
      pts = sorted((r["steps"], r["median_s"], r.get("xla_temp_mb") or 0,
                    r["peak_rss_mb"]) for r in rows
                   if "error" not in r and r["algo"] == algo and _remat(r) == remat)
      if not pts:
        continue
      label = names[algo] + suffix[remat]
      style = styles[algo]
      marker = {"off": "o", "dots": "^", "full": "s"}[remat]
      ax_t.plot([p[0] for p in pts], [p[1] for p in pts], style, marker=marker, label=label)
      ax_m.plot([p[0] for p in pts], [p[2] for p in pts], style, marker=marker, label=label)
  ax_t.set(xlabel="inner steps", ylabel="seconds / meta-step", title="time")
  ax_m.set(xlabel="inner steps", ylabel="XLA temp buffer MB", title="memory")
  for ax in (ax_t, ax_m):
    ax.legend()
    ax.grid(alpha=0.3)
  fig.suptitle("Omniglot 5-way 1-shot conv-4, meta-batch 4")
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--suite", default="paper")
  ap.add_argument("--out", default="runs/bench")
  ap.add_argument("--peers", action="store_true", help="add the PyTorch peers")
  ap.add_argument("--iters", type=int, default=5, help="timed meta-steps per cell")
  ap.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
  ap.add_argument("--table", metavar="JSONL", help="print the table of an earlier run")
  ap.add_argument("--preset", help="run only the suite's cells of this preset")
  ap.add_argument("--algo", help="run only the suite's cells of this algorithm (comma list)")
  ap.add_argument("--cell", help=argparse.SUPPRESS)
  args = ap.parse_args(argv)

  if args.table:
    with open(args.table) as f:
      print(table([json.loads(line) for line in f if line.strip()]))
    return 0

  if args.cell:  # child process: one cell, one JSON line
    cell = json.loads(args.cell)
    if cell["impl"] == "metajax":
      from metajax.bench.jax_cell import run_cell
    else:
      from metajax.bench.torch_peers import run_cell
    print(json.dumps(run_cell(cell)))
    return 0

  os.makedirs(args.out, exist_ok=True)
  cells = suite_cells(args.suite, args.peers)
  if args.preset:
    have = sorted({c["preset"] for c in cells})
    cells = [c for c in cells if c["preset"] == args.preset]
    if not cells:
      raise SystemExit(f"suite {args.suite!r} has no cells of preset {args.preset!r}; "
                       f"its presets: {', '.join(have)}")
  if args.algo:
    have = sorted({c["algo"] for c in cells})
    cells = [c for c in cells if c["algo"] in args.algo.split(",")]
    if not cells:
      raise SystemExit(f"suite {args.suite!r} has no cells of algorithm {args.algo!r}; "
                       f"its algorithms: {', '.join(have)}")
  name = args.suite + (f"_{args.preset}" if args.preset else "") + (
      f"_{args.algo.replace(',', '-')}" if args.algo else "")
  path = os.path.join(args.out, f"{name}.jsonl")
  rows = []
  with open(path, "w") as f:
    for cell in cells:
      cell.setdefault("iters", args.iters)
      row = run_in_subprocess(cell, args.timeout)
      rows.append(row)
      f.write(json.dumps(row) + "\n")
      f.flush()
      print(f"{row['preset']:>14} {row['algo']:>8} {row['impl']:>10} "
            + (f"error: {row['error']}" if "error" in row else
               f"{row['median_s']:.4f} s/step  compile {_fmt(row.get('compile_s'), 1, 1)} s"
               f"  rss {row['peak_rss_mb']:.0f} MB"), flush=True)
  print(table(rows))
  if args.suite == "steps":
    plot_steps(rows, os.path.join(args.out, "steps.png"))
  print(f"results in {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
