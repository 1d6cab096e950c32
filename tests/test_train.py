"""Training loop, outputs, determinism and bad input."""

import glob
import json
import math
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from metajax import config as config_lib
from metajax.train import load_config, train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = sorted(glob.glob(os.path.join(ROOT, "experiments", "sine_*.py")))


def tiny(**overrides):
  c = config_lib.sinusoid_base()
  c.update(dict(num_steps=200, steps_per_call=50, log_every=100, meta_batch=5,
                eval_tasks=30, eval_max_steps=2, eval_shots=(5,), plots=False))
  c.update(overrides)
  return c


def _read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


@pytest.mark.parametrize("path", EXPERIMENTS, ids=os.path.basename)
def test_experiment_files_load_and_validate(path):
  config = load_config(path)
  assert os.path.basename(path) == f"sine_{config.algorithm}.py"
  with open(path) as f:
    assert "python -m metajax.train --config experiments/" in f.read()


def test_same_seed_same_metrics(tmp_path):
  a = train_and_evaluate(tiny(algorithm="metasgd"), str(tmp_path / "a"), progress=False)
  b = train_and_evaluate(tiny(algorithm="metasgd"), str(tmp_path / "b"), progress=False)
  ma, mb = (_read_jsonl(tmp_path / d / "metrics.jsonl") for d in "ab")
  assert [(r["step"], r["loss"]) for r in ma] == [(r["step"], r["loss"]) for r in mb]
  assert a["by_k_shot"] == b["by_k_shot"]
  c = train_and_evaluate(tiny(algorithm="metasgd", seed=1), str(tmp_path / "c"),
                         progress=False)
  assert c["by_k_shot"] != a["by_k_shot"]


def test_chunking_does_not_change_the_run(tmp_path):
  a = train_and_evaluate(tiny(steps_per_call=100), str(tmp_path / "a"), progress=False)
  b = train_and_evaluate(tiny(steps_per_call=30), str(tmp_path / "b"), progress=False)
  np.testing.assert_allclose(a["by_k_shot"]["5"]["mse"], b["by_k_shot"]["5"]["mse"],
                             rtol=1e-5)


def test_maml_learns_sinusoids(tmp_path):
  # Predicting 0 for y = A sin(x - p), A ~ U[0.1, 5] has MSE E[A^2]/2 = 4.25: the
  # meta-learned model must do better before adapting, and much better after.
  r = train_and_evaluate(tiny(num_steps=4000, steps_per_call=1000, log_every=1000,
                              meta_batch=25, eval_tasks=200),
                         str(tmp_path), progress=False)
  mse = r["by_k_shot"]["5"]["mse"]
  assert mse[0] < 4.25
  # Trained with one inner step: a second one at test time need not improve on
  # it after 4,000 meta-steps (on an AVX2 host: 0.967, then 1.013, from 3.11).
  assert mse[1] < 0.5 * mse[0] and mse[2] < 0.5 * mse[0]
  rows = _read_jsonl(tmp_path / "metrics.jsonl")
  assert [row["step"] for row in rows] == [1000, 2000, 3000, 4000]
  assert rows[-1]["loss"] < 0.5 * rows[0]["loss"]


def test_nan_loss_stops_with_the_step(tmp_path):
  with pytest.raises(FloatingPointError, match=r"at meta-step \d+"):
    train_and_evaluate(tiny(inner_lr=1e30, num_steps=400), str(tmp_path), progress=False)
  for row in _read_jsonl(tmp_path / "metrics.jsonl"):
    assert all(math.isfinite(v) for v in row.values() if isinstance(v, float))


@pytest.mark.parametrize("key,value", [
    ("inner_steps", 0), ("inner_lr", -0.1), ("k_shot", 0), ("meta_batch", -2),
    ("outer_lr", 0.0), ("num_steps", 0), ("algorithm", "mamll"), ("outer_adam_eps", 0.0),
    ("imaml_inner", "newton"), ("metasgd_lr_range", (0.01,)), ("metasgd_lr_range", (0.0, 0.1)),
    ("amplitude", (5.0, 0.1)), ("x_range", (-5.0, float("nan"))), ("phase", "0"),
    ("eval_inner_lr", 0.0), ("eval_inner_lr", float("inf"))])
def test_bad_values_name_the_value(key, value):
  c = tiny()
  with c.ignore_type():
    c[key] = value
  with pytest.raises(config_lib.ConfigError, match=f"{key}.*{re.escape(repr(value))}"):
    config_lib.validate(c)


def _fewshot(**overrides):
  c = config_lib.fewshot_base("omniglot")
  c.update(overrides)
  return c


@pytest.mark.parametrize("make,message", [
    (lambda: tiny(inner_optimizer="adam"),
     r"inner_optimizer='adam' is only supported for algorithm='reptile' \(got "
     r"algorithm='maml'\); use 'sgd'"),
    (lambda: tiny(batching="auto"), r"batching='auto' is for image tasks; the sinusoid uses"),
    (lambda: tiny(cg_damping=-1.0), r"cg_damping must be a finite number >= 0, got -1.0"),
    (lambda: tiny(meta_batch=6, batching="scan", task_chunk=4),
     r"task_chunk=4 must divide meta_batch=6 for batching='scan'"),
    (lambda: _fewshot(eval_batch=7), r"eval_batch=7 must divide eval_tasks=600 and val_tasks="),
    (lambda: _fewshot(dataset_config="ravi"),
     r"dataset_config for omniglot must be one of \('maml', 'vinyals'\), got 'ravi'"),
    (lambda: _fewshot(ways_train=20),
     r"ways_train=20 needs algorithm='protonet' \(a 5-way head is trained for 'maml'\); "
     r"use 0"),
    (lambda: _fewshot(algorithm="reptile", inner_batch=6),
     r"inner_batch=6 exceeds the 5 support rows of a training task; use 0 \(all\) or fewer"),
    (lambda: tiny(eval_shots=()),
     r"eval_shots must be a non-empty tuple of positive integers, got \(\)"),
    (lambda: tiny(hidden=(40, 0)),
     r"hidden must be a non-empty tuple of positive integers, got \(40, 0\)"),
    (lambda: tiny(algorithm="reptile", first_order=True),
     r"first_order=True drops .* algorithm='reptile' has none .*: use False"),
    (lambda: _fewshot(algorithm="protonet", first_order=True), r"algorithm='protonet' has none"),
    (lambda: tiny(algorithm="imaml", unroll=True),
     r"unroll=True .* algorithm='imaml' does not use it: use False"),
    (lambda: tiny(task="cifar"), r"task must be one of \('sinusoid', 'omniglot', "),
    (lambda: config_lib.fewshot_base("cifar"),
     r"few-shot dataset must be one of \('omniglot', 'mini_imagenet'\), got 'cifar'"),
])
def test_config_errors_say_what_would_be_accepted(make, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(make())


REMAT_HINT = (r"\(remat is no longer a bool: True is now 'full', False 'off'\)")


@pytest.mark.parametrize("raw", ["True", "true", "False", "1"])
def test_remat_as_a_bool_on_the_command_line_names_the_mode_that_replaced_it(raw):
  path = os.path.join(ROOT, "experiments", "sine_maml.py")
  message = (r"remat must be one of \('auto', 'off', 'dots', 'full'\), got "
             + re.escape(repr(raw)))
  with pytest.raises(config_lib.ConfigError,
                     match=message + (" " + REMAT_HINT if raw != "1" else "$")):
    load_config(path, [f"remat={raw}"])


def test_remat_as_a_bool_in_an_experiment_file_names_the_mode_that_replaced_it(tmp_path):
  path = tmp_path / "exp.py"
  path.write_text("from metajax.config import sinusoid_base\n\n"
                  "def get_config():\n  c = sinusoid_base()\n  c.remat = True\n  return c\n")
  with pytest.raises(config_lib.ConfigError,
                     match=r"exp.py: get_config\(\) sets remat to a value of another type "
                           r"than its default in metajax.config: .*" + REMAT_HINT):
    load_config(str(path))


def test_test_only_keys_resume_where_validation_does_not_use_them():
  from metajax.checkpoint import resume_changes
  sine = tiny().to_dict()
  now = dict(sine, eval_max_steps=5, eval_inner_lr=0.02)
  assert resume_changes(sine, now, "ckpt") == {}
  assert set(resume_changes(sine, dict(sine, val_tasks=7), "ckpt")) == {"val_tasks"}
  # Images: the validation adapts for eval_max_steps, at eval_inner_lr.
  image = config_lib.fewshot_base("omniglot").to_dict()
  now = dict(image, eval_max_steps=5, eval_inner_lr=0.02)
  assert set(resume_changes(image, now, "ckpt")) == {"eval_max_steps", "eval_inner_lr"}


def test_a_run_saved_with_an_ignored_first_order_or_unroll_still_loads_and_resumes():
  # Such keys were accepted and ignored (the run computed them as False); they
  # are config errors now, but an old run's config.json must still load.
  from metajax.checkpoint import resume_changes
  from metajax.retest import config_from_json
  for changes in (dict(algorithm="reptile", first_order=True),
                  dict(algorithm="imaml", first_order=True, unroll=True)):
    saved = dict(tiny().to_dict(), **changes)
    config = config_from_json(saved)
    assert not config.first_order and not config.unroll
    now = dict(saved, first_order=False, unroll=False)
    assert resume_changes(saved, now, "ckpt") == {}
  saved = dict(tiny().to_dict(), algorithm="maml", first_order=True)  # kept where it is read
  assert config_from_json(saved).first_order


def test_a_run_saved_with_a_bool_remat_reads_as_off_or_full():
  from metajax.checkpoint import resume_changes
  from metajax.inner import REMAT_MODES
  from metajax.retest import config_from_json
  assert config_lib.REMAT == ("auto",) + REMAT_MODES
  for old, new in ((False, "off"), (True, "full")):
    saved = dict(tiny().to_dict(), remat=old)
    now = dict(saved, remat=new)
    assert config_from_json(saved).remat == new
    assert resume_changes(saved, now, "ckpt") == {}
    # Resuming it under another mode is refused, with the diff in today's terms.
    other = "dots" if new == "off" else "off"
    assert resume_changes(saved, dict(saved, remat=other), "ckpt") == {
        "remat": f"  remat: {new!r} -> {other!r} (--config.remat={new} resumes the run as "
                 "it was computed)"}
    assert saved["remat"] is old and now["remat"] == new  # the callers' dicts as they were


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="'auto' is 'dots' on CPU only")
def test_an_image_run_saved_with_remat_off_resumes_where_auto_is_off():
  # The image tasks' default became "auto"; a run saved with remat=False
  # resumes under it wherever "auto" runs "off" too, and is refused only where
  # it would change the program (second order through >= 2 steps, on CPU).
  from metajax.checkpoint import resume_changes
  base = config_lib.fewshot_base("omniglot").to_dict()
  assert base["remat"] == "auto"
  for changes in (dict(inner_steps=1), dict(inner_steps=5, algorithm="fomaml"),
                  dict(inner_steps=5, first_order=True), dict(inner_steps=5, algorithm="reptile")):
    now = dict(base, **changes)
    assert resume_changes(dict(now, remat=False), now, "ckpt") == {}, changes
  now = dict(base, inner_steps=5)
  assert resume_changes(dict(now, remat=False), now, "ckpt") == {
      "remat": "  remat: 'off' -> 'auto' ('off' -> 'dots' on this backend; --config.remat=off "
               "resumes the run as it was computed)"}
  # MAML++ with the multi-step loss: "auto" runs "off" in that phase, "dots" after it.
  now = dict(base, algorithm="mamlpp", inner_steps=5, msl_steps=100)
  assert resume_changes(dict(now, remat="dots"), now, "ckpt") == {
      "remat": "  remat: 'dots' -> 'auto' ('dots' -> 'off then dots' on this backend; "
               "--config.remat=dots resumes the run as it was computed)"}


def test_a_config_missing_a_key_names_it_and_its_default():
  c = tiny()
  del c["inner_lr"]
  with pytest.raises(config_lib.ConfigError,
                     match=r"config is missing key 'inner_lr' \(default: 0.01\); start"):
    config_lib.validate(c)


def test_outer_adam_eps_reaches_adam():
  # Adam's first update is -lr g / (|g| + eps) (both moments bias-corrected):
  # with g = eps the step is half the rate.
  from metajax.step import make_outer_optimizer
  c = tiny(outer_lr=0.1)
  c.outer_adam_eps = 1e-3
  opt = make_outer_optimizer(c)
  g = {"w": np.array([1e-3, -1e-3, 1.0], np.float32)}
  updates, _ = opt.update(g, opt.init(g))
  np.testing.assert_allclose(updates["w"], [-0.05, 0.05, -0.1 / 1.001], rtol=1e-5)


def test_unknown_key_in_config_file(tmp_path):
  path = tmp_path / "exp.py"
  path.write_text("from metajax.config import sinusoid_base\n"
                  "def get_config():\n  c = sinusoid_base()\n  c.inner_stpes = 3\n"
                  "  return c\n")
  with pytest.raises(config_lib.ConfigError, match="'inner_stpes'.*'inner_steps'"):
    load_config(str(path))


def _cli(*args, cwd=ROOT):
  return subprocess.run([sys.executable, "-m", "metajax.train", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=600)


def test_cli_unknown_override_is_an_error(tmp_path):
  p = _cli("--config", "experiments/sine_maml.py", "--workdir", str(tmp_path),
           "--config.inner_lrr=0.1")
  assert p.returncode == 2
  assert "'inner_lrr'" in p.stderr and "'inner_lr'" in p.stderr
  assert "Traceback" not in p.stderr


def test_cli_task_override_names_the_fix(tmp_path):
  p = _cli("--config", "experiments/sine_maml.py", "--workdir", str(tmp_path / "run"),
           "--config.task=omniglot")
  assert p.returncode == 2 and "Traceback" not in p.stderr
  assert "the task cannot change from the command line" in p.stderr
  assert "omniglot_5w1s_maml.py" in p.stderr


def test_a_refused_run_leaves_no_empty_workdir(tmp_path):
  # num_devices=2 on this one-device process: refused after the workdir was made.
  p = _cli("--config", "experiments/sine_maml.py", "--workdir", str(tmp_path / "run"),
           "--config.num_devices=2")
  assert p.returncode == 2 and "num_devices" in p.stderr, p.stderr
  assert not (tmp_path / "run").exists()


def test_cpu_devices_splits_the_meta_batch_over_host_devices(tmp_path):
  # A fresh process: the key takes effect before JAX starts (this one has 1 CPU device).
  p = _cli("--config", "experiments/sine_maml.py", "--workdir", str(tmp_path),
           "--config.cpu_devices=2", "--config.meta_batch=4", "--config.num_steps=20",
           "--config.log_every=10", "--config.eval_tasks=20", "--config.plots=False")
  assert p.returncode == 0, p.stderr
  assert json.loads((tmp_path / "eval.json").read_text())["devices"] == 2


def test_the_cli_sets_cpu_devices_before_training(tmp_path, monkeypatch):
  from metajax import sharding, train
  calls = []
  monkeypatch.setattr(sharding, "set_cpu_devices",
                      lambda n, required=True: calls.append((n, required)))
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
  monkeypatch.setattr(os, "cpu_count", lambda: 2)
  monkeypatch.setattr(sharding, "cgroup_cpu_quota", lambda *a, **k: None)  # no container cap
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.setattr(train, "initialize_distributed", lambda launch: None)
  def stop(config, workdir, progress=True):
    raise config_lib.ConfigError("stopped before training")
  monkeypatch.setattr(train, "train_and_evaluate", stop)
  for file, extra, want in (("omniglot_5w1s_maml.py", [], (2, False)),
                            ("omniglot_5w1s_maml.py", ["--config.cpu_devices=1"], (1, True)),
                            ("omniglot_5w1s_maml.py", ["--distributed"], (0, False)),
                            ("omniglot_5w1s_reptile.py", [], (0, False)),  # meta_batch 5
                            ("mini_5w1s_maml.py", [], (0, False))):
    calls.clear()
    assert train.main(["--config", os.path.join(ROOT, "experiments", file),
                       "--workdir", str(tmp_path / "run"), *extra]) == 2
    assert calls == [want], (file, extra)


@pytest.mark.parametrize("file,env,devices", [
    ("omniglot_5w1s_maml.py", {}, 2), ("omniglot_5w1s_maml.py", {"JAX_NUM_CPU_DEVICES": "1"}, 1),
    ("mini_5w1s_maml.py", {}, 1)])
def test_auto_cpu_devices_in_a_fresh_process(tmp_path, file, env, devices):
  """The CLI's order: cpu_devices is applied before anything starts JAX."""
  script = ("import os, sys, jax\n"
            "os.sched_getaffinity = lambda pid: {0, 1}\n"
            "from metajax import sharding, train\n"
            "sharding.cgroup_cpu_quota = lambda *a, **k: None\n"   # no container cap
            "def report(config, workdir, progress=True):\n"
            "  print('cpu devices', len(jax.devices('cpu')), flush=True)\n"
            "  sys.exit(0)\n"
            "train.train_and_evaluate = report\n"
            "sys.exit(train.main(sys.argv[1:]))\n")
  environ = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
  p = subprocess.run([sys.executable, "-c", script, "--config", f"experiments/{file}",
                      "--workdir", str(tmp_path / "run")], cwd=ROOT, env={**environ, **env},
                     capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr
  assert f"cpu devices {devices}" in p.stdout


def test_another_runs_metrics_without_a_checkpoint_are_not_overwritten(tmp_path):
  from metajax.train import main
  other = load_config(os.path.join(ROOT, "experiments", "sine_maml.py"), ["seed=7"])
  (tmp_path / "config.json").write_text(json.dumps(other.to_dict(), default=str))
  (tmp_path / "metrics.jsonl").write_text('{"step": 100, "loss": 1.0}\n')
  args = ["--config", os.path.join(ROOT, "experiments", "sine_maml.py"), "--workdir",
          str(tmp_path), "--config.num_steps=20", "--config.log_every=10"]
  assert main(args) == 2
  assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 100, "loss": 1.0}\n'
  assert main(args + ["--config.seed=7"]) == 0  # the same run, restarted: fine
  assert [r["step"] for r in _read_jsonl(tmp_path / "metrics.jsonl")] == [10, 20]
  # Restarted computed another way (e.g. after running out of memory): fine too.
  import shutil
  shutil.rmtree(tmp_path / "checkpoints")
  assert main(args + ["--config.seed=7", "--config.batching=scan", "--config.remat=full"]) == 0


def test_cli_end_to_end(tmp_path):
  p = _cli("--config", "experiments/sine_anil.py", "--workdir", str(tmp_path),
           "--config.num_steps=300", "--config.steps_per_call", "100",
           "--config.log_every=100", "--config.eval_tasks=20",
           "--config.eval_shots=5,10", "--config.meta_batch=4")
  assert p.returncode == 0, p.stderr
  assert len(_read_jsonl(tmp_path / "metrics.jsonl")) == 3
  with open(tmp_path / "eval.json") as f:
    e = json.load(f)
  assert e["algorithm"] == "anil" and e["num_steps"] == 300
  assert set(e["by_k_shot"]) == {"5", "10"}
  assert len(e["by_k_shot"]["10"]["mse"]) == 11  # 0..10 test-time steps
  assert json.load(open(tmp_path / "config.json"))["meta_batch"] == 4
  for png in ("adaptation.png", "curves.png"):
    with open(tmp_path / png, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_sinusoid_table_skips_few_shot_runs(tmp_path):
  from metajax.results import sinusoid_table
  (tmp_path / "omni").mkdir()
  (tmp_path / "omni" / "eval.json").write_text('{"metric": "accuracy", "k_shot_train": 1}')
  assert sinusoid_table(str(tmp_path)).count("\n") == 1  # header rows only


def test_results_prints_only_tables_with_rows(tmp_path, capsys):
  from metajax.results import main as results_main
  assert results_main([str(tmp_path)]) == 1
  assert "no finished run under" in capsys.readouterr().err
  (tmp_path / "sine").mkdir()
  (tmp_path / "sine" / "eval.json").write_text(json.dumps({
      "algorithm": "maml", "k_shot_train": 5, "sec_per_meta_step": 1e-3, "compile_s": 1.0,
      "train_wall_s": 10.0, "num_steps": 100,
      "by_k_shot": {"5": {"mse": [4.0, 1.0], "ci95": [0.5, 0.1]}}}))
  assert results_main([str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert "| maml | 5 | sine | 1.000 ± 0.100 | 1.000 ± 0.100 |" in out
  assert "accuracy" not in out  # no empty few-shot table
  # A few-shot run whose test diverged shows it, not a number.
  (tmp_path / "omni").mkdir()
  (tmp_path / "omni" / "eval.json").write_text(json.dumps({
      "metric": "accuracy", "algorithm": "metasgd", "dataset": "omniglot", "ways": 5,
      "k_shot": 1, "final_accuracy": None, "final_ci95": None, "inner_steps_test": 3,
      "iterations": 100, "best_step": None, "sec_per_meta_step": 0.5, "train_wall_s": 60.0}))
  assert results_main([str(tmp_path)]) == 0
  assert "| metasgd | omniglot | 5w1s | omni | diverged | 3 | 100 | - |" in \
      capsys.readouterr().out


def test_plots_cli_reports_a_run_without_validation_as_an_error(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0, "elapsed_s": 1.0}\n')
  p = subprocess.run([sys.executable, "-m", "metajax.plots", str(tmp_path / "v.png"),
                      str(tmp_path)], capture_output=True, text=True, timeout=120)
  assert p.returncode == 1 and "Traceback" not in p.stderr
  assert "has no validation rows" in p.stderr and p.stderr.startswith("error: ")


def test_config_overrides_take_both_forms_from_argparse_leftovers():
  # Shared by metajax.retest and metajax.bench.soak.
  import argparse
  from metajax.train import config_overrides
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir")
  args, rest = parser.parse_known_args(
      ["--config.inner_lr=0.1", "--workdir", "w", "--config.num_steps", "7", "--config.tag="])
  assert args.workdir == "w"
  assert config_overrides(parser, rest) == ["inner_lr=0.1", "num_steps=7", "tag="]


def test_parse_args_launch_and_overrides():
  from metajax.train import parse_args
  assert parse_args(["--config", "e.py", "--workdir", "w", "--config.inner_lr=0.1",
                     "--config.num_steps", "7", "--config.x", "-0.5"]) == (
                         "e.py", "w", ["inner_lr=0.1", "num_steps=7", "x=-0.5"], None)
  assert parse_args(["--config=e.py", "--workdir=w", "--distributed"])[3] == {}
  launch = parse_args(["--config", "e.py", "--workdir", "w", "--coordinator_address", "h:1",
                       "--num_processes", "2", "--process_id", "0"])[3]
  assert launch == {"coordinator_address": "h:1", "num_processes": 2, "process_id": 0}


@pytest.mark.parametrize("argv,message", [
    (["--config", "e.py"], "required: --workdir"),
    (["--config", "e.py", "--workdir", "w", "--conf", "f.py"], "unknown argument '--conf'"),
    (["--config", "e.py", "--workdir", "w", "--num_processes", "0"], "integer >= 1, got '0'"),
    (["--config", "e.py", "--workdir", "w", "--process_id", "x"], "integer >= 0, got 'x'"),
    (["--config", "e.py", "--workdir", "w", "--config.num_steps"],
     "--config.num_steps needs a value")])
def test_parse_args_refuses_bad_command_lines(argv, message, capsys):
  from metajax.train import parse_args
  with pytest.raises(SystemExit) as exit_info:
    parse_args(argv)
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err


def test_validation_of_diverged_tasks_is_null_in_json_and_ranks_last():
  from metajax.evaluate import make_validator
  from metajax.train import sinusoid_setup
  config = tiny(val_tasks=8)
  algo, problem, _, _, state = sinusoid_setup(config)
  validate = make_validator(config, algo, problem)
  good = validate(state.adaptation_params())
  assert np.isfinite(good["val_mse"]) and good["val_mse"] > 0 and good["score"] == -good["val_mse"]
  # One NaN weight: every task's loss is NaN.
  mp = state.adaptation_params()
  mp = dict(mp, params=jax.tree.map(lambda p: p.at[..., 0].set(np.nan) if p.ndim else p,
                                    mp["params"]))
  bad = validate(mp)
  assert bad["val_mse"] is None and bad["val_ci95"] is None
  assert bad["val_diverged_tasks"] == 8 and bad["score"] == -np.inf
  json.dumps({k: v for k, v in bad.items() if k != "score"}, allow_nan=False)
