"""Benchmark configurations: the shapes of the papers' settings.

Conv-4 with batch statistics (transductive BN), 3x3 convs + 2x2 max-pool,
Adam outer step; synthetic episodes of the real shapes.
"""

PRESETS = {
    # name: ways, shots, queries per class, meta_batch, inner steps, inner lr,
    # filters, image shape
    "omni_5w1s": dict(ways=5, shots=1, queries=15, meta_batch=32, steps=1,
                      inner_lr=0.4, filters=64, image_shape=(28, 28, 1)),
    # remat "off", not "auto"'s "dots": measured faster here (1-9% by host and
    # hour) with peak RSS still 0.84x the PyTorch loop's (docs/RESULTS.md,
    # "`remat="off"` against `"dots"` at the current code").
    "omni_20w1s": dict(ways=20, shots=1, queries=15, meta_batch=16, steps=5,
                       inner_lr=0.1, filters=64, image_shape=(28, 28, 1), remat="off"),
    "mini_5w1s": dict(ways=5, shots=1, queries=15, meta_batch=4, steps=5,
                      inner_lr=0.01, filters=32, image_shape=(84, 84, 3)),
    # MAML's Omniglot training episodes: K query images per class (10 per task).
    "omni_5w1s_train": dict(ways=5, shots=1, queries=1, meta_batch=32, steps=1,
                            inner_lr=0.4, filters=64, image_shape=(28, 28, 1)),
    # Small enough to sweep inner steps 1..20 at second order on a laptop CPU.
    "omni_5w1s_mb4": dict(ways=5, shots=1, queries=15, meta_batch=4, steps=1,
                          inner_lr=0.4, filters=64, image_shape=(28, 28, 1)),
}

ALGORITHMS = ("maml", "fomaml", "reptile", "metasgd", "anil")


def cell_remat(cell: dict):
  """A cell's remat mode: its own "remat", else its preset's, else "auto"
  (metajax.inner.remat_mode)."""
  if "remat" in cell:
    return cell["remat"]
  return PRESETS.get(cell.get("preset"), {}).get("remat", "auto")


def timed_iters(cell: dict) -> int:
  """A cell's timed meta-steps after its warm-up ("iters", default 5; at least 1)."""
  iters = int(cell.get("iters", 5))
  if iters < 1:
    raise ValueError(f"iters must be >= 1 (timed meta-steps after the warm-up), got {iters}")
  return iters
