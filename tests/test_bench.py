"""The benchmark harness (tiny cells; speed itself is never asserted)."""

import json
import math
import os
import subprocess
import sys

import pytest

from metajax.batching import resolve
from metajax.bench.__main__ import suite_cells, table


def test_suites_cover_the_issue_grid():
  paper = suite_cells("paper", peers=False)
  assert {(c["preset"], c["algo"]) for c in paper} == {
      (p, a) for p in ("sine", "omni_5w1s", "omni_20w1s", "mini_5w1s")
      for a in ("maml", "fomaml", "reptile", "metasgd", "anil")}
  steps = suite_cells("steps", peers=False)
  assert {c["steps"] for c in steps} == {1, 2, 5, 10, 20}
  assert {(c["algo"], c["remat"]) for c in steps} == {
      ("maml", "off"), ("maml", "dots"), ("maml", "full"), ("fomaml", "off"),
      ("fomaml", "full"),
      ("imaml", "off"),  # iMAML's memory is flat without remat: no remat cells
      ("mamlpp", "off"), ("mamlpp", "dots")}
  peers = suite_cells("peers", peers=True)
  assert {c["impl"] for c in peers} == {"metajax", "torch-loop", "torch-func"}


def test_table_ratio_is_metajax_over_peer():
  row = dict(preset="omni_5w1s", algo="maml", steps=1, median_s=1.0, min_s=1.0, max_s=1.0,
             peak_rss_mb=1.0, tasks_per_s=1.0)
  rows = [dict(row, impl="metajax"), dict(row, impl="torch-loop", median_s=4.0)]
  assert "| 0.25 |" in table(rows)
  # A remat mode on the metajax row (the peers have none) keeps the ratio; an
  # older run's bool reads as the mode it was.
  for remat, shown in (("dots", "dots"), (True, "full"), (False, "off")):
    rows = [dict(row, impl="metajax", remat=remat), dict(row, impl="torch-loop", median_s=4.0)]
    assert f"| {shown} | " in table(rows).splitlines()[2] and "| 0.25 |" in table(rows)
  # A cell on the host split into 2 CPU devices says so and keeps its ratio.
  rows = [dict(row, impl="metajax", batching="scan", chunk=1, conv="winograd", devices=2),
          dict(row, impl="torch-loop", median_s=4.0)]
  assert "| scan/1/winograd on 2 devices |" in table(rows) and "| 0.25 |" in table(rows)
  # Same device in each framework's words: JAX "gpu", PyTorch "cuda".
  rows = [dict(row, impl="metajax", backend="gpu"),
          dict(row, impl="torch-loop", median_s=4.0, backend="cuda")]
  assert "| 0.25 |" in table(rows)
  # No ratio between a JAX cell on the CPU and a PyTorch cell on a GPU.
  rows = [dict(row, impl="metajax", backend="cpu"),
          dict(row, impl="torch-loop", median_s=4.0, backend="cuda")]
  assert "| 0.25 |" not in table(rows) and "| – | – |" in table(rows)


def test_auto_resolution_and_bad_chunk():
  assert resolve("auto", None, "auto", 32, backend="cpu") == ("scan", 1, "winograd")
  assert resolve("auto", None, "auto", 32, backend="gpu") == ("vmap", None, "xla")
  with pytest.raises(ValueError, match="chunk 5 .* 32"):
    resolve("scan", 5, "xla", 32)


def test_a_cell_runs_its_presets_remat_unless_it_names_one(monkeypatch):
  from metajax.bench import jax_cell
  from metajax.bench.presets import PRESETS, cell_remat
  assert PRESETS["omni_20w1s"]["remat"] == "off"
  assert cell_remat({"preset": "omni_20w1s"}) == "off"
  assert cell_remat({"preset": "omni_20w1s", "remat": "dots"}) == "dots"
  assert cell_remat({"preset": "mini_5w1s"}) == cell_remat({"preset": "sine"}) == "auto"

  class Built(Exception):
    pass

  def named(name, **kwargs):  # stop the cell where its algorithm is built
    raise Built(kwargs["remat"])

  monkeypatch.setattr(jax_cell.Algorithm, "named", named)
  for cell, want in (({"preset": "omni_20w1s"}, "off"),
                     ({"preset": "omni_20w1s", "remat": "full"}, "full"),
                     ({"preset": "mini_5w1s"}, "auto")):
    with pytest.raises(Built) as built:
      jax_cell.run_cell({"impl": "metajax", "algo": "maml", **cell})
    assert built.value.args == (want,), cell
  # The sharding benchmark runs a preset's remat too.
  from metajax.bench import sharding as bench_sharding
  for preset, want in (("omni_20w1s", "off"), ("mini_5w1s", "auto")):
    with pytest.raises(Built) as built:
      bench_sharding.run(preset, devices=1, iters=1)
    assert built.value.args == (want,), preset


def _cell_in_a_subprocess(cell: dict) -> dict:
  p = subprocess.run([sys.executable, "-m", "metajax.bench", "--cell", json.dumps(cell)],
                     capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr
  return json.loads(p.stdout.strip().splitlines()[-1])


def test_one_cell_in_a_subprocess():
  r = _cell_in_a_subprocess({"impl": "metajax", "preset": "sine", "algo": "maml",
                             "steps_per_call": 20, "iters": 2})
  assert r["median_s"] > 0 and r["n"] == 2 and r["compile_s"] > 0
  assert r["peak_rss_mb"] > 50 and r["run_rss_mb"] > 50
  assert r["devices"] == 1


def test_a_cell_on_two_cpu_devices():
  """"cpu_devices" splits the cell's meta-batch over host devices, set in its own process."""
  r = _cell_in_a_subprocess({"impl": "metajax", "preset": "omni_5w1s_mb4", "algo": "fomaml",
                             "iters": 1, "cpu_devices": 2})
  assert r["devices"] == 2 and r["median_s"] > 0 and math.isfinite(r["loss"])


@pytest.mark.parametrize("argv,message", [
    (["--bogus"], "unknown argument '--bogus'"),
    (["--config.num_steps"], "--config.num_steps needs a value")])
def test_soak_refuses_arguments_it_would_drop(argv, message, capsys):
  from metajax.bench import soak
  with pytest.raises(SystemExit) as exit_info:
    soak.main(argv + ["--workdir", "/nonexistent/never_deleted"])
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err


def test_a_peer_cell_process_loads_no_jax():
  """The PyTorch peers run under metajax.bench; their memory must not count JAX."""
  import importlib.util
  modules = ["metajax.bench.__main__", "metajax.bench.memory", "metajax.bench.presets"]
  if importlib.util.find_spec("torch") is not None:
    modules.append("metajax.bench.torch_peers")
  loaded = _run_probe(
      "import json, sys\n" + "".join(f"import {m}\n" for m in modules)
      + "print(json.dumps({'loaded': [m for m in ('jax', 'jaxlib', 'optax', 'flax') "
      "if m in sys.modules]}))")
  assert loaded == {"loaded": []}


def test_soak_refuses_a_warmup_without_a_metrics_row(capsys):
  from metajax.bench import soak
  with pytest.raises(SystemExit) as exit_info:
    soak.main(["--steps", "200", "--log_every", "50", "--workdir", "/nonexistent/x"])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert "warm-up of 20 meta-steps" in err and "--steps >= 500" in err


def test_soak_deletes_only_an_earlier_soaks_workdir(tmp_path, capsys):
  from metajax.bench import soak
  for name in ("config.json", "metrics.jsonl", "soak.json"):
    (tmp_path / name).write_text("{}")
  (tmp_path / "checkpoints").mkdir()
  soak.check_workdir(str(tmp_path))  # an earlier soak's: may be deleted
  soak.check_workdir(str(tmp_path / "absent"))
  (tmp_path / "my_notes.txt").write_text("keep me")
  with pytest.raises(SystemExit) as exit_info:
    soak.main(["--steps", "1000", "--workdir", str(tmp_path)])
  assert exit_info.value.code == 2
  assert "holds files a soak does not write (my_notes.txt)" in capsys.readouterr().err
  assert (tmp_path / "my_notes.txt").read_text() == "keep me"
  # A training run's workdir (no soak.json), even with only names a soak writes.
  os.remove(tmp_path / "my_notes.txt")
  os.remove(tmp_path / "soak.json")
  with pytest.raises(ValueError, match="holds no soak.json"):
    soak.check_workdir(str(tmp_path))


def _run_probe(code: str) -> dict:
  """Runs `code` in a fresh Python process; its last stdout line, as JSON."""
  p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert p.returncode == 0, p.stderr
  return json.loads(p.stdout.strip().splitlines()[-1])


_PEAK_PROBE = """
import json, numpy as np
from metajax.bench import memory
base = memory.hwm_mb()
buf = np.ones(300 * 2**20 // 8)  # touched: resident
del buf
mark = memory.reset_peak()
print(json.dumps(dict(base=base, mark=mark, run=memory.run_mb(mark),
                      whole=memory.whole_peak_mb(mark))))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc (Linux)")
def test_whole_peak_survives_the_reset_that_starts_the_run_peak():
  # Resetting the kernel's high-water mark (which also resets getrusage's
  # ru_maxrss, what the cells used to read at the end) must not lose the peak:
  # a 300 MB buffer touched before the reset counts in the whole process's
  # peak, and not in the run's. A fresh process, so that no earlier
  # test's peak hides the buffer's.
  r = _run_probe(_PEAK_PROBE)
  before, reset = r["mark"]
  assert reset
  assert before >= r["base"] + 250
  assert r["run"] < before - 200
  assert r["whole"] >= r["base"] + 250


_TRIM_PROBE = """
import json
from metajax.heap import return_freed_heap
blocks = [bytearray(64 * 1024) for _ in range(3000)]  # ~200 MB in heap-sized pieces
for b in blocks:
  b[0] = 1
pin = bytearray(64 * 1024)  # above them: free() cannot shrink the heap's top past it
del blocks, b  # freed, but glibc keeps the pages below the pin mapped
def rss():
  with open("/proc/self/status") as f:
    return next(int(l.split()[1]) / 1024 for l in f if l.startswith("VmRSS:"))
freed = rss()
print(json.dumps(dict(freed=freed, trimmed=return_freed_heap(), after=rss())))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc (Linux)")
@pytest.mark.skipif("malloc" in os.environ.get("LD_PRELOAD", ""),
                    reason="another allocator is preloaded; malloc_trim is glibc's")
def test_return_freed_heap_gives_freed_pages_back():
  # What compile_lowered does after XLA compiles: ~200 MB freed in 64 KB pieces
  # (below glibc's mmap threshold, so kept in the heap) leave the resident set
  # until the trim; a fresh process, so no earlier test's heap is in the count.
  r = _run_probe(_TRIM_PROBE)
  if not r["trimmed"]:
    pytest.skip("no glibc malloc_trim on this system")
  assert r["after"] < r["freed"] - 150, r


def test_cells_refuse_zero_timed_steps():
  from metajax.bench.jax_cell import run_cell
  with pytest.raises(ValueError, match="iters must be >= 1.*got 0"):
    run_cell({"preset": "sine", "algo": "maml", "iters": 0})


def test_a_filter_that_matches_no_cell_lists_what_the_suite_has(tmp_path):
  from metajax.bench.__main__ import main
  with pytest.raises(SystemExit, match="no cells of preset 'omni_5w5s'; its presets: "
                     "mini_5w1s, omni_20w1s, omni_5w1s, sine"):
    main(["--suite", "paper", "--preset", "omni_5w5s", "--out", str(tmp_path)])
  with pytest.raises(SystemExit, match="no cells of algorithm 'mamlpp'; its algorithms: "
                     "anil, fomaml, maml, metasgd, reptile"):
    main(["--suite", "paper", "--preset", "sine", "--algo", "mamlpp", "--out", str(tmp_path)])
