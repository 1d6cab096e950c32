"""Checkpoints, resume and faults: SIGKILL at a random point and during a
save, a corrupt latest checkpoint, a changed config, NaN losses, no pickle.

The reference for every resumed run is an uninterrupted run of the same
length: its final parameters must be bitwise identical.
"""

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metajax import config as config_lib
from metajax import loop
from metajax.algorithms import Algorithm
from metajax.checkpoint import Checkpoints, load_arrays
from metajax.step import init_state, make_meta_step
from metajax.train import load_config, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, EVERY = 2000, 50
ARGS = ["--config", os.path.join(ROOT, "experiments", "sine_maml.py"),
        f"--config.num_steps={STEPS}", "--config.steps_per_call=10",
        "--config.log_every=100", f"--config.checkpoint_every={EVERY}",
        "--config.plots=false", "--config.eval_tasks=20", "--config.eval_shots=(5,)",
        "--config.eval_max_steps=1"]
ENV = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")

# Runs the trainer; a watcher thread SIGKILLs the process as soon as the n-th
# save is in progress (orbax's temporary directory exists).
KILL_DURING_SAVE = """
import os, signal, sys, threading
n, workdir = int(sys.argv[1]), sys.argv[2]
ckpt = os.path.join(workdir, "checkpoints")
def watch():
  seen = set()
  while True:
    try:
      tmp = {name for name in os.listdir(ckpt) if "tmp" in name}
    except FileNotFoundError:
      continue
    seen |= tmp
    if len(seen) >= n and tmp:
      os.kill(os.getpid(), signal.SIGKILL)
threading.Thread(target=watch, daemon=True).start()
from metajax.train import main
sys.exit(main(sys.argv[3:]))
"""


def _train(workdir, *extra, check=True):
  p = subprocess.run([sys.executable, "-m", "metajax.train", *ARGS, "--workdir",
                      str(workdir), *extra], env=ENV, capture_output=True, text=True,
                     timeout=600)
  if check:
    assert p.returncode == 0, p.stderr[-3000:]
  return p


def _final_state(workdir, step=STEPS):
  """The saved TrainState arrays of `step`."""
  return load_arrays(os.path.join(workdir, "checkpoints", str(step)))


def _assert_bitwise_equal(a, b, note=""):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    assert x.tobytes() == y.tobytes(), f"resumed run differs from the uninterrupted one {note}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted run of STEPS meta-steps."""
  workdir = tmp_path_factory.mktemp("reference")
  _train(workdir)
  return workdir


def test_sigkill_at_a_random_point_then_resume_is_bitwise_identical(reference, tmp_path):
  seed = random.randrange(10**6)
  rng = random.Random(seed)
  proc = subprocess.Popen([sys.executable, "-m", "metajax.train", *ARGS, "--workdir",
                           str(tmp_path)], env=ENV, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  ckpt = tmp_path / "checkpoints"
  deadline = time.time() + 120
  while not (ckpt.is_dir() and any(n.isdigit() for n in os.listdir(ckpt))):
    assert proc.poll() is None and time.time() < deadline, "training never checkpointed"
    time.sleep(0.01)
  time.sleep(rng.uniform(0.0, 1.0))  # somewhere in the remaining run
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, f"run finished before the kill (seed {seed})"
  assert str(STEPS) not in os.listdir(ckpt), f"run finished before the kill (seed {seed})"
  p = _train(tmp_path)
  assert "resuming from the checkpoint of meta-step" in p.stdout
  _assert_bitwise_equal(_final_state(tmp_path), _final_state(reference), f"(seed {seed})")
  # metrics.jsonl has every logged step exactly once.
  steps = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")]
  assert steps == list(range(100, STEPS + 1, 100)), f"seed {seed}"


def test_sigkill_during_a_save_then_resume_is_bitwise_identical(reference, tmp_path):
  proc = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, "3", str(tmp_path),
                         *ARGS, "--workdir", str(tmp_path)], env=ENV, capture_output=True,
                        timeout=600)
  assert proc.returncode == -signal.SIGKILL
  names = os.listdir(tmp_path / "checkpoints")
  assert any("tmp" in n for n in names), names  # killed mid-save: a partial save is left
  p = _train(tmp_path)
  assert "resuming from the checkpoint of meta-step" in p.stdout
  assert not any("tmp" in n for n in os.listdir(tmp_path / "checkpoints"))
  _assert_bitwise_equal(_final_state(tmp_path), _final_state(reference))


@pytest.mark.parametrize("experiment,extra", [
    ("sine_metasgd.py", []),  # learned per-entry rates and their Adam moments
    ("sine_reptile.py", ["--config.inner_optimizer=adam", "--config.carry_inner_adam=True"]),
    # MAML++ phases on both sides of the checkpoint: first-order MSL to 10,
    # second-order MSL to 30, then the last step's loss; learned per-step rates.
    ("sine_maml.py", ["--config.algorithm=mamlpp", "--config.inner_steps=3",
                      "--config.lslr=True", "--config.msl_steps=30",
                      "--config.first_order_steps=10"]),
    ("sine_maml.py", ["--config.outer_lr_schedule=cosine", "--config.outer_lr_min=1e-4"]),
])
def test_resume_mid_run_with_more_state_is_bitwise_identical(experiment, extra, tmp_path):
  """Algorithms that carry more than params and Adam moments, and a schedule:
  a run resumed from its middle checkpoint ends bitwise where the whole run did."""
  import shutil
  args = ["--config", os.path.join(ROOT, "experiments", experiment), *extra,
          "--config.num_steps=40", "--config.steps_per_call=10", "--config.log_every=10",
          "--config.checkpoint_every=20", "--config.plots=false", "--config.eval_tasks=4",
          "--config.eval_shots=(5,)", "--config.eval_max_steps=1", "--workdir", str(tmp_path)]
  assert main(args) == 0
  whole = _final_state(tmp_path, 40)
  shutil.rmtree(tmp_path / "checkpoints" / "40")  # as if killed after step 20's save
  assert main(args) == 0
  assert json.loads((tmp_path / "eval.json").read_text())["resumed_from_step"] == 20
  _assert_bitwise_equal(_final_state(tmp_path, 40), whole, f"({experiment} {extra})")


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(reference, tmp_path):
  import shutil
  shutil.copytree(reference, tmp_path, dirs_exist_ok=True)
  latest = tmp_path / "checkpoints" / str(STEPS)
  for root, _, files in os.walk(latest / "state"):
    for name in files:  # truncate every array / metadata file to half its size
      path = os.path.join(root, name)
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
  p = _train(tmp_path)
  assert f"checkpoint {tmp_path / 'checkpoints'}/{STEPS} is unreadable" in p.stderr
  assert f"resuming from the checkpoint of meta-step {STEPS - EVERY}" in p.stdout
  assert (tmp_path / "checkpoints.unreadable" / str(STEPS)).is_dir()
  _assert_bitwise_equal(_final_state(tmp_path), _final_state(reference))


def test_resume_with_a_changed_config_is_refused_with_a_diff(reference, tmp_path, capsys):
  import shutil
  shutil.copytree(reference, tmp_path, dirs_exist_ok=True)
  before = sorted(os.listdir(tmp_path / "checkpoints"))
  config_json = (tmp_path / "config.json").read_text()
  rc = main([*ARGS, "--workdir", str(tmp_path), "--config.inner_lr=0.02",
             "--config.meta_batch=10"])
  err = capsys.readouterr().err
  assert rc == 2
  assert "inner_lr: 0.01 -> 0.02" in err and "meta_batch: 25 -> 10" in err
  assert "log_every" in err  # names what may change
  assert sorted(os.listdir(tmp_path / "checkpoints")) == before
  assert (tmp_path / "config.json").read_text() == config_json
  # Run-length and logging keys may change: a longer run continues.
  first = json.load(open(reference / "eval.json"))
  rc = main([*ARGS, "--workdir", str(tmp_path), f"--config.num_steps={STEPS + 100}",
             "--config.log_every=50"])
  assert rc == 0
  assert str(STEPS + 100) in os.listdir(tmp_path / "checkpoints")
  # Its times add the first session's (which a resume that only tests reports).
  resumed = json.load(open(tmp_path / "eval.json"))
  assert resumed["resumed_from_step"] == STEPS
  assert resumed["compile_s"] > first["compile_s"] > 0
  assert resumed["train_wall_s"] > first["train_wall_s"]


def test_validation_time_adds_up_over_resumed_sessions(tmp_path):
  # The first session validates, the resumed one does not: its eval_s must
  # still hold the first session's validation time.
  args = [*ARGS, "--workdir", str(tmp_path), "--config.num_steps=40",
          "--config.checkpoint_every=40", "--config.val_tasks=50"]
  assert main([*args, "--config.eval_every=20"]) == 0
  first = json.load(open(tmp_path / "eval.json"))
  assert main([*args, "--config.num_steps=60", "--config.eval_every=0"]) == 0
  resumed = json.load(open(tmp_path / "eval.json"))
  assert resumed["resumed_from_step"] == 40
  assert resumed["eval_s"] >= first["eval_s"] > 0


def test_fewer_steps_than_done_and_all_checkpoints_unreadable_are_errors(reference, tmp_path,
                                                                        capsys):
  import shutil
  shutil.copytree(reference, tmp_path, dirs_exist_ok=True)
  assert main([*ARGS, "--workdir", str(tmp_path), f"--config.num_steps={STEPS - 100}"]) == 2
  assert f"num_steps={STEPS - 100} is less than the {STEPS} meta-steps already done" \
      in capsys.readouterr().err
  steps = sorted(os.listdir(tmp_path / "checkpoints"), key=int)
  for step in steps:  # every checkpoint's config file cut short
    for root, _, files in os.walk(tmp_path / "checkpoints" / step / "meta"):
      for name in files:
        open(os.path.join(root, name), "w").close()
  assert main([*ARGS, "--workdir", str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert f"none of the checkpoints [{', '.join(steps)}]" in err and "could be read" in err
  assert sorted(os.listdir(tmp_path / "checkpoints.unreadable"), key=int) == steps


def test_an_inner_adam_run_from_before_beta2_0999_is_not_resumed():
  from metajax.checkpoint import check_resumable
  from metajax.config import ConfigError, sinusoid_base
  now = sinusoid_base()
  now.update(dict(algorithm="reptile", inner_optimizer="adam"))
  saved = {k: v for k, v in now.to_dict().items() if k != "carry_inner_adam"}
  with pytest.raises(ConfigError, match="inner Adam used beta2 = 0.99"):
    check_resumable(saved, now.to_dict(), "runs/old")
  check_resumable(now.to_dict(), now.to_dict(), "runs/new")  # the same metajax: fine


def test_schedule_length_may_not_change_on_resume():
  saved = load_config(os.path.join(ROOT, "experiments", "sine_maml.py")).to_dict()
  saved["outer_lr_schedule"] = "cosine"
  now = dict(saved, num_steps=saved["num_steps"] + 1)
  from metajax.checkpoint import check_resumable
  with pytest.raises(config_lib.ConfigError, match="'cosine' learning-rate schedule"):
    check_resumable(saved, now, "DIR")


def test_a_changed_test_protocol_is_refused_with_a_pointer_to_retest():
  from metajax.checkpoint import check_resumable
  saved = load_config(os.path.join(ROOT, "experiments", "sine_maml.py")).to_dict()
  # eval_query: the sinusoid's validation scores that many query points
  # (eval_max_steps it does not use, so that one resumes; test_train.py).
  now = dict(saved, eval_query=saved["eval_query"] + 5)
  with pytest.raises(config_lib.ConfigError, match=r"python -m metajax.retest --workdir runs/x "
                     r"--config.eval_query=\.\.\."):
    check_resumable(saved, now, "runs/x/checkpoints")
  now["inner_lr"] = 2 * saved["inner_lr"]  # training changes too: no retest pointer
  with pytest.raises(config_lib.ConfigError) as e:
    check_resumable(saved, now, "runs/x/checkpoints")
  assert "inner_lr" in str(e.value) and "metajax.retest" not in str(e.value)
  with pytest.raises(config_lib.ConfigError) as e:  # more devices: still training, no pointer
    check_resumable(saved, dict(saved, num_devices=4), "runs/x/checkpoints")
  assert "num_devices" in str(e.value) and "metajax.retest" not in str(e.value)
  # The host split into other CPU devices resumes (with loop.run's note on placement),
  # as does a run saved before the key existed.
  check_resumable(saved, dict(saved, cpu_devices=2), "runs/x/checkpoints")
  check_resumable({k: v for k, v in saved.items() if k != "cpu_devices"}, saved,
                  "runs/x/checkpoints")


def test_a_scheduled_run_may_end_at_its_last_checkpoint(tmp_path, capsys):
  # A cosine run stopped after its checkpoint of meta-step 40 (of 60): resuming
  # with num_steps=40 takes no step of a changed schedule, so it is allowed and
  # tests the parameters of step 40; any other new length is still refused.
  import shutil
  args = [*ARGS, "--workdir", str(tmp_path), "--config.outer_lr_schedule=cosine",
          "--config.checkpoint_every=20", "--config.keep_checkpoints=5"]
  assert main([*args, "--config.num_steps=60"]) == 0
  shutil.rmtree(tmp_path / "checkpoints" / "60")  # as if killed before that save
  os.remove(tmp_path / "eval.json")
  assert main([*args, "--config.num_steps=50"]) == 2
  err = capsys.readouterr().err
  assert "'cosine' learning-rate schedule" in err and "num_steps=40 ends the run" in err
  assert main([*args, "--config.num_steps=40"]) == 0
  result = json.load(open(tmp_path / "eval.json"))
  assert result["resumed_from_step"] == 40
  assert json.load(open(tmp_path / "config.json"))["num_steps"] == 40
  saved = load_arrays(str(tmp_path / "checkpoints" / "40"))
  assert int(np.asarray(saved["step"])) == 40


def test_restoring_never_unpickles(reference, monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError("pickle used while loading a checkpoint")
  monkeypatch.setattr(pickle, "load", refuse)
  monkeypatch.setattr(pickle, "loads", refuse)
  monkeypatch.setattr(pickle, "Unpickler", refuse)
  state = _final_state(reference)
  assert int(np.asarray(state["step"])) == STEPS


# ----------------------------------------------------------------- NaN policy
def _toy_config(**overrides):
  c = config_lib.sinusoid_base()
  c.update(**{**dict(num_steps=200, steps_per_call=10, log_every=20, checkpoint_every=50),
              **overrides})
  return c


def _counting_step(nan_steps):
  """A fake meta-step: params += 1; the loss is the (1-based) step number, NaN
  at `nan_steps`."""
  nan_steps = jnp.asarray(sorted(nan_steps) or [-1])

  def meta_step(state, key, data=None):
    step = state.step + 1
    loss = jnp.where(jnp.any(step == nan_steps), jnp.nan, step.astype(jnp.float32))
    return (state.replace(step=step, params=state.params + 1.0),
            {"loss": loss, "skipped": ~jnp.isfinite(loss)})
  return meta_step


def _toy_state():
  from metajax.step import TrainState
  return TrainState(step=jnp.zeros((), jnp.int32), params=jnp.zeros(3), inner_lr=None,
                    opt_state=(), key=jax.random.PRNGKey(0))


def test_retention_keeps_the_newest_and_the_best_scored(tmp_path):
  ckpts = Checkpoints(str(tmp_path / "c"), keep=2)
  state = _toy_state()
  scores = {2: 0.5, 4: 0.9, 6: 0.7, 8: None, 10: 0.6}
  for step, score in scores.items():
    ckpts.save(state.replace(step=jnp.asarray(step, jnp.int32),
                             params=jnp.full(3, float(step))), {"n": step}, score=score)
  # The two newest (8, 10) and the best-scored (4); 2 and 6 are gone.
  assert ckpts.steps() == [4, 8, 10]
  assert ckpts.best_step() == 4
  restored, meta = ckpts.restore(4, state)
  assert meta == {"n": 4}
  np.testing.assert_array_equal(np.asarray(restored.params), [4.0, 4.0, 4.0])

def test_a_nonfinite_score_ranks_lowest_and_never_evicts_the_best(tmp_path):
  ckpts = Checkpoints(str(tmp_path / "c"), keep=2)
  state = _toy_state()
  for step, score in {2: 0.9, 4: float("nan"), 6: 0.5, 8: float("inf")}.items():
    ckpts.save(state.replace(step=jnp.asarray(step, jnp.int32)), {}, score=score)
  assert ckpts.best_step() == 2 and ckpts.steps() == [2, 6, 8]


def test_a_resumed_run_logs_the_rows_of_an_uninterrupted_one(tmp_path):
  # checkpoint_every=50 is not a multiple of log_every=20: after a stop at step
  # 61 the resumed leg's first row (60) must still average steps 41-60.
  config = _toy_config(num_steps=100)
  loop.run(config, _toy_state(), _counting_step([]), str(tmp_path / "a"),
           Checkpoints(str(tmp_path / "a" / "c")), progress=False)
  with pytest.raises(FloatingPointError, match="meta-step 61"):
    loop.run(config, _toy_state(), _counting_step([61]), str(tmp_path / "b"),
             Checkpoints(str(tmp_path / "b" / "c")), progress=False)
  loop.run(config, _toy_state(), _counting_step([]), str(tmp_path / "b"),
           Checkpoints(str(tmp_path / "b" / "c")), progress=False)
  rows = {w: [(r["step"], r["loss"], r["loss_last"]) for r in map(
      json.loads, open(tmp_path / w / "metrics.jsonl"))] for w in "ab"}
  assert rows["a"] == rows["b"]
  assert rows["a"][2] == (60, 50.5, 60.0)  # steps 41-60


def test_the_skips_in_a_row_carry_over_a_resume(tmp_path):
  config = _toy_config(on_nan="skip")
  ckpts = lambda: Checkpoints(str(tmp_path / "c"))
  loop.run(_toy_config(on_nan="skip", num_steps=100), _toy_state(),
           _counting_step(range(41, 200)), str(tmp_path), ckpts(), progress=False)
  with pytest.raises(FloatingPointError, match="meta-steps 41 to 140 all had a non-finite"):
    loop.run(config, _toy_state(), _counting_step(range(41, 200)), str(tmp_path), ckpts(),
             progress=False)


def test_a_resume_on_other_devices_says_it_is_not_bitwise(tmp_path, monkeypatch, capsys):
  assert loop._placement(_toy_state()) == "1 cpu device"
  ckpts = lambda: Checkpoints(str(tmp_path / "c"))
  with monkeypatch.context() as m:
    m.setattr(loop, "_placement", lambda state: "4 cpu devices")
    loop.run(_toy_config(num_steps=50), _toy_state(), _counting_step([]), str(tmp_path),
             ckpts(), progress=True)
  assert "note:" not in capsys.readouterr().err
  loop.run(_toy_config(num_steps=100), _toy_state(), _counting_step([]), str(tmp_path),
           ckpts(), progress=True)
  assert ("note: the checkpoint was made on 4 cpu devices and this leg runs on 1 cpu device"
          in capsys.readouterr().err)


def test_nan_stops_the_run_naming_the_step_and_keeps_the_last_checkpoint(tmp_path):
  checkpoints = Checkpoints(str(tmp_path / "checkpoints"))
  with pytest.raises(FloatingPointError) as e:
    loop.run(_toy_config(), _toy_state(), _counting_step([73]), str(tmp_path),
             checkpoints, progress=False)
  msg = str(e.value)
  assert "loss is nan at meta-step 73" in msg
  assert "last good checkpoint is meta-step 50" in msg and "on_nan=skip" in msg
  assert checkpoints.steps() == [50]
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [20, 40, 60]


def test_a_nonfinite_meta_gradient_with_a_finite_loss_stops_before_its_checkpoint(tmp_path):
  """The step to 100 returns a finite loss but NaN parameters (its meta-gradient
  was not finite): nothing of that chunk may be checkpointed."""
  def meta_step(state, key, data=None):
    step = state.step + 1
    params = jnp.where(step >= 100, jnp.nan, state.params + 1.0)
    return (state.replace(step=step, params=params),
            {"loss": jnp.float32(1.0), "finite": step < 100})

  checkpoints = Checkpoints(str(tmp_path / "checkpoints"))
  with pytest.raises(FloatingPointError) as e:
    loop.run(_toy_config(), _toy_state(), meta_step, str(tmp_path), checkpoints,
             progress=False)
  assert "meta-gradient is not finite (loss 1) at meta-step 100" in str(e.value)
  assert "last good checkpoint is meta-step 50" in str(e.value)
  assert checkpoints.steps() == [50]
  restored, _ = checkpoints.restore(50, _toy_state())
  np.testing.assert_array_equal(np.asarray(restored.params), np.full(3, 50.0))


def test_rewriting_a_run_file_that_fails_midway_leaves_the_old_one(tmp_path):
  """config.json and a resumed metrics.jsonl are replaced whole or not at all."""
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 100}\n')
  with pytest.raises(TypeError):
    loop.replace_file(str(path), None)  # the write itself fails
  assert path.read_text() == '{"step": 100}\n'
  assert os.listdir(tmp_path) == ["metrics.jsonl"]  # no temporary file left
  loop.replace_file(str(path), "")
  assert path.read_text() == ""


def test_a_resume_that_fails_while_rewriting_its_files_keeps_the_metrics(tmp_path, monkeypatch):
  # A first session to meta-step 100 (checkpoints at 50 and 100), then a resumed
  # one whose rewrite of config.json / metrics.jsonl fails: the rows stay.
  config = _toy_config()
  config.num_steps = 100
  loop.run(config, _toy_state(), _counting_step([]), str(tmp_path),
           Checkpoints(str(tmp_path / "checkpoints")), progress=False)
  before = (tmp_path / "metrics.jsonl").read_text()
  assert [json.loads(line)["step"] for line in before.splitlines()] == [20, 40, 60, 80, 100]

  def fail(path, text):
    raise OSError(f"disk full while writing {path}")
  monkeypatch.setattr(loop, "replace_file", fail)
  with pytest.raises(OSError, match="disk full"):
    loop.run(_toy_config(), _toy_state(), _counting_step([]), str(tmp_path),
             Checkpoints(str(tmp_path / "checkpoints")), progress=False)
  assert (tmp_path / "metrics.jsonl").read_text() == before


def test_nan_skip_policy_logs_skips_and_stops_a_diverged_run(tmp_path):
  config = _toy_config(on_nan="skip")
  state, _ = loop.run(config, _toy_state(), _counting_step([5, 6, 33]),
                      str(tmp_path / "a"), Checkpoints(str(tmp_path / "a" / "c")),
                      progress=False)
  rows = [json.loads(line) for line in open(tmp_path / "a" / "metrics.jsonl")]
  assert [r["skipped_steps"] for r in rows[:3]] == [2, 1, 0]
  assert int(state.step) == 200
  with pytest.raises(FloatingPointError, match="meta-steps 41 to 140 all had a non-finite") as e:
    loop.run(config, _toy_state(), _counting_step(range(41, 200)), str(tmp_path / "b"),
             Checkpoints(str(tmp_path / "b" / "c")), progress=False)
  assert "on_nan=skip to skip" not in str(e.value)  # already skipping: not advised again


class FiniteFlagTest(chex.TestCase):
  """make_meta_step without skipping says whether loss and meta-gradient were
  finite: |r|^0.5 at r = 0 has the finite value 0 and no finite derivative."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_finite_loss_with_a_nonfinite_meta_gradient_is_flagged(self):
    algo = Algorithm(name="maml", steps=1, inner_lr=0.1)
    # batch: (x, y, exponent); the support's squared error is 0 with zero
    # gradient at w = 0, so the adapted w is 0 and the query residual is exactly 0.
    loss_fn = lambda p, b: jnp.mean(jnp.abs(b[0] @ p["w"] - b[1]) ** b[2])
    optimizer = optax.adam(0.1)

    def sampler(query_exponent):
      def sample(key):
        x = jax.random.normal(key, (4, 6, 2))
        zeros = jnp.zeros((4, 6, 1))
        return {"support": (x, zeros, jnp.full((4, 1, 1), 2.0)),
                "query": (x, zeros + 1.0 * (query_exponent == 2.0),
                          jnp.full((4, 1, 1), query_exponent))}
      return sample

    state = init_state(algo, {"w": jnp.zeros((2, 1))}, optimizer, jax.random.PRNGKey(0))
    for exponent, finite in ((0.5, False), (2.0, True)):
      step = self.variant(make_meta_step(algo, loss_fn, sampler(exponent), optimizer))
      new, metrics = step(state, jax.random.PRNGKey(1))
      self.assertTrue(np.isfinite(float(metrics["loss"])))
      self.assertEqual(bool(metrics["finite"]), finite)
      self.assertEqual(bool(jnp.all(jnp.isfinite(new.params["w"]))), finite)


class SkipNonFiniteTest(chex.TestCase):
  """make_meta_step(skip_nonfinite=True): a NaN task leaves the state unchanged."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_nan_step_is_skipped_and_finite_step_is_not(self):
    algo = Algorithm(name="maml", steps=1, inner_lr=0.1)
    loss_fn = lambda p, b: jnp.mean((b[0] @ p["w"] - b[1]) ** 2)
    optimizer = optax.adam(0.1)

    def sampler(poison):
      def sample(key):
        x = jax.random.normal(key, (4, 6, 2))
        task = (x, jnp.sum(x, -1, keepdims=True) * (jnp.nan if poison else 1.0))
        return {"support": task, "query": task}
      return sample

    state = init_state(algo, {"w": jnp.ones((2, 1))}, optimizer, jax.random.PRNGKey(0))
    for poison in (True, False):
      step = self.variant(make_meta_step(algo, loss_fn, sampler(poison), optimizer,
                                         skip_nonfinite=True))
      new, metrics = step(state, jax.random.PRNGKey(1))
      self.assertEqual(int(new.step), 1)
      self.assertEqual(bool(metrics["skipped"]), poison)
      same = jax.tree.map(lambda a, b: bool(jnp.all(a == b)),
                          (new.params, new.opt_state), (state.params, state.opt_state))
      self.assertEqual(all(jax.tree.leaves(same)), poison)
