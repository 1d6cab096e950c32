"""The run-comparison figure reads what metrics.jsonl says, and bad workdirs fail clearly."""

import json
import os

import pytest

from metajax import plots


def _write_metrics(workdir, rows):
  os.makedirs(workdir)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")


def test_validation_curves_reads_only_validation_rows(tmp_path):
  run = str(tmp_path / "run_a")
  _write_metrics(run, [
      {"step": 100, "loss": 1.5, "elapsed_s": 60.0},
      {"step": 200, "loss": 1.4, "elapsed_s": 150.0, "val_accuracy": 0.25, "val_ci95": 0.0125},
      {"step": 300, "loss": 1.3, "elapsed_s": 240.0, "val_accuracy": None, "val_ci95": None,
       "val_diverged_tasks": 3},  # a diverged validation: no point to plot
      {"step": 400, "loss": 1.2, "elapsed_s": 390.0, "val_accuracy": 0.5, "val_ci95": 0.02}])
  steps, minutes, acc, ci = plots.validation_curves(run)
  assert steps == [200, 400]
  assert minutes == [2.5, 6.5]
  assert acc == [25.0, 50.0]
  assert ci == pytest.approx([1.25, 2.0])
  run = str(tmp_path / "run_b")
  _write_metrics(run, [{"step": 100, "loss": 1.5, "elapsed_s": 60.0, "val_accuracy": None,
                        "val_ci95": None, "val_diverged_tasks": 20}])
  with pytest.raises(ValueError, match=r"every validation in .* diverged"):
    plots.validation_curves(run)


def test_plot_validation_writes_a_png(tmp_path):
  runs = []
  for name, acc in (("maml", 0.4), ("fomaml", 0.38)):
    runs.append(str(tmp_path / name))
    _write_metrics(runs[-1], [{"step": s, "loss": 1.0, "elapsed_s": 10.0 * s,
                               "val_accuracy": acc + s / 1e4, "val_ci95": 0.01}
                              for s in (100, 200, 300)])
  out = str(tmp_path / "cmp.png")
  plots.plot_validation(out, runs)
  with open(out, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_bad_workdirs_name_the_problem(tmp_path):
  with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
    plots.validation_curves(str(tmp_path / "missing"))
  run = str(tmp_path / "no_val")
  _write_metrics(run, [{"step": 100, "loss": 1.5, "elapsed_s": 60.0}])
  with pytest.raises(ValueError, match="no validation rows"):
    plots.validation_curves(run)
