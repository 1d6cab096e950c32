"""Re-testing a trained run under another test protocol (metajax.retest)."""

import json
import os

import numpy as np
import pytest

from metajax import config as config_lib
from metajax.retest import _tested_step, main, retest
from metajax.train import train_and_evaluate
from test_episodes import synthetic_data, tiny_fewshot  # noqa: F401 (fixture)
from test_train import tiny


def _read(path):
  with open(path) as f:
    return json.load(f)


def test_retest_of_an_image_run(tmp_path, synthetic_data, capsys):
  workdir = str(tmp_path / "run")
  # Validation at 20 and 40 picks the checkpoint the test used.
  trained = train_and_evaluate(tiny_fewshot(num_steps=40, eval_every=20, log_every=20,
                                            eval_max_steps=2),
                               workdir, progress=False)
  before = open(os.path.join(workdir, "eval.json")).read()
  # As if training were still saving here: a re-test must not tidy its
  # half-written checkpoint away (orbax removes such directories on opening).
  saving = os.path.join(workdir, "checkpoints", "60.orbax-checkpoint-tmp-1764600000000000")
  os.makedirs(saving)

  # Same protocol: the restored best checkpoint scores what the run's own test did.
  same = retest(workdir)
  assert same["checkpoint_step"] == trained["best_step"]
  assert same["params"] == "best validation" and same["name"] == "retest"
  np.testing.assert_allclose(same["accuracy"], trained["accuracy"], rtol=1e-6)

  # More test steps: the first three are the same episodes and steps as before.
  more = retest(workdir, ["eval_max_steps=4"])
  assert more["steps"] == [0, 1, 2, 3, 4] and more["overrides"] == {"eval_max_steps": 4}
  np.testing.assert_allclose(more["accuracy"][:3], trained["accuracy"], rtol=1e-6)
  assert _read(os.path.join(workdir, "eval_eval_max_steps=4.json"))["accuracy"] == \
      more["accuracy"]

  # Scoring only the last step: one column, the every-step test's last (its own
  # pass, which skips the query after steps 0..3).
  last = retest(workdir, ["eval_max_steps=4", "test_every_step=False"])
  assert last["steps"] == [4] and len(last["accuracy"]) == 1
  assert last["name"] == "eval_max_steps=4,test_every_step=False"
  assert last["accuracy"][0] == pytest.approx(more["accuracy"][-1], rel=1e-6)
  assert last["final_ci95"] == pytest.approx(more["final_ci95"], rel=1e-6)

  # Another rate changes the adapted scores, not the unadapted one.
  slow = retest(workdir, ["eval_inner_lr=0.01"], name="slow")
  assert slow["inner_lr"] == 0.01 and slow["accuracy"][0] == pytest.approx(
      trained["accuracy"][0], rel=1e-6)
  assert slow["accuracy"][1:] != trained["accuracy"][1:]
  assert os.path.isfile(os.path.join(workdir, "eval_slow.json"))

  # A chosen checkpoint.
  first = retest(workdir, step=20, name="at20")
  assert first["checkpoint_step"] == 20 and first["params"] == "chosen"

  # The run's own outputs are untouched.
  assert open(os.path.join(workdir, "eval.json")).read() == before
  assert os.path.isdir(saving)

  # Bad input names what is wrong and what would be accepted.
  with pytest.raises(config_lib.ConfigError, match="inner_lr.*may change only eval_max_steps"):
    retest(workdir, ["inner_lr=0.1"])
  with pytest.raises(config_lib.ConfigError, match=r"no checkpoint of meta-step 7 .*\[20, 40\]"):
    retest(workdir, step=7)
  with pytest.raises(config_lib.ConfigError, match="no_such_key"):
    retest(workdir, ["no_such_key=1"])
  assert main(["--workdir", str(tmp_path / "nothing")]) == 2
  assert "config.json does not exist" in capsys.readouterr().err
  assert main(["--workdir", workdir, "--config.eval_max_steps=3", "--name", "cli"]) == 0
  out = capsys.readouterr().out
  assert "checkpoint of meta-step" in out and "eval_cli.json" in out


def test_retest_of_a_sinusoid_run(tmp_path):
  workdir = str(tmp_path)
  # With validations the checkpoints are scored, but a sinusoid run's eval.json
  # tests its final parameters, so a re-test does too.
  trained = train_and_evaluate(tiny(num_steps=100, eval_every=20, val_tasks=10), workdir,
                               progress=False)
  more = retest(workdir, ["eval_max_steps=4"])
  assert more["params"] == "newest" and more["checkpoint_step"] == 100
  for k, r in trained["by_k_shot"].items():
    np.testing.assert_allclose(more["by_k_shot"][k]["mse"][:3], r["mse"], rtol=1e-6)
    assert len(more["by_k_shot"][k]["mse"]) == 5


def test_retest_on_the_validation_split(tmp_path, synthetic_data):
  workdir = str(tmp_path)
  train_and_evaluate(tiny_fewshot(num_steps=20, eval_every=20, log_every=20, val_tasks=20,
                                  eval_max_steps=2), workdir, progress=False)
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  val = retest(workdir, ["eval_tasks=20"], split="validation")
  assert val["split"] == "validation" and val["name"] == "validation,eval_tasks=20"
  # The validation during training scored the same 20 episodes after the same
  # eval_max_steps = 2 steps (its own pass, which skips the earlier steps' queries).
  assert val["accuracy"][-1] == pytest.approx(rows[-1]["val_accuracy"], rel=1e-6)
  with pytest.raises(config_lib.ConfigError, match="split must be one of"):
    retest(workdir, split="train")
  # ways decides what was trained (the head's width): not a test-time key.
  with pytest.raises(config_lib.ConfigError, match="--config.ways would change what was trained"):
    retest(workdir, ["ways=20"], split="validation")
  from metajax.tasks.episodes import EpisodeError
  with pytest.raises(EpisodeError, match="25 query images per class need 26 .* validation split has 20"):
    retest(workdir, ["eval_query=25"], split="validation")


@pytest.mark.parametrize("key, counterpart, trained, other, common", [
    # Reptile's protocol trains once on 10 shots for both the 1- and 5-shot tables.
    ("k_shot", "k_shot_train", 1, 2,
     dict(algorithm="reptile", inner_steps=2, inner_lr=0.1, outer_optimizer="sgd",
          outer_lr=1.0, k_shot_train=3, eval_max_steps=2)),
    # ProtoNet's Omniglot protocol trains one 60-way model for the 5- and 20-way tables.
    ("ways", "ways_train", 2, 4, dict(algorithm="protonet", ways_train=6, eval_max_steps=0)),
])
def test_retest_of_a_key_training_did_not_read(tmp_path, synthetic_data, key, counterpart,
                                               trained, other, common):
  # With its training counterpart set, training never reads `key`; so re-testing
  # a run at another value must score what a run configured for it scores itself.
  common = dict(common, num_steps=20, eval_every=0, log_every=20)
  run = str(tmp_path / "run")
  train_and_evaluate(tiny_fewshot(**{key: trained}, **common), run, progress=False)
  configured = train_and_evaluate(tiny_fewshot(**{key: other}, **common),
                                  str(tmp_path / "configured"), progress=False)
  again = retest(run, [f"{key}={other}"])
  assert again[key] == other and again["name"] == f"{key}={other}"
  np.testing.assert_allclose(again["accuracy"], configured["accuracy"], rtol=1e-6)
  assert again["accuracy"][0] < 0.9  # the re-test's episodes are not already solved
  # Where training read `key` (no counterpart), it stays fixed (refused from
  # config.json alone, before any checkpoint is read).
  plain = tmp_path / "plain"
  plain.mkdir()
  saved = dict(_read(os.path.join(run, "config.json")), **{counterpart: 0})
  (plain / "config.json").write_text(json.dumps(saved))
  with pytest.raises(config_lib.ConfigError, match=f"--config.{key} would change what was "
                     f"trained.*{key} too where the run trained on {counterpart}"):
    retest(str(plain), [f"{key}={other}"])


def test_retest_refuses_abbreviated_flags(capsys):
  # --st is not --step: a prefix of a flag is an unknown argument.
  with pytest.raises(SystemExit) as exit_info:
    main(["--workdir", "runs/x", "--st", "3"])
  assert exit_info.value.code == 2
  assert "unknown argument '--st'" in capsys.readouterr().err


def test_summarize_reports_diverged_episodes_as_null():
  from metajax.fewshot import percent, summarize
  acc_BxS = np.array([[0.2, 0.6, np.nan], [0.4, 0.8, 1.0], [0.2, 1.0, np.nan]])
  got = summarize(acc_BxS)
  sd = np.std([0.6, 0.8, 1.0], ddof=1)
  np.testing.assert_allclose(got["accuracy"][:2], [0.8 / 3, 0.8])
  np.testing.assert_allclose(got["ci95"][1], 1.96 * sd / np.sqrt(3))
  assert got["accuracy"][2] is None and got["ci95"][2] is None
  assert got["diverged_tasks"] == [0, 0, 2]
  assert got["final_accuracy"] is None and got["final_ci95"] is None
  assert percent(None, None) == "diverged" and percent(0.5, 0.01) == "50.00 ± 1.00%"


def test_a_diverged_validation_episode_is_null_and_counts_as_wrong_in_the_rank():
  from metajax.fewshot import validation_row
  row = validation_row(np.array([0.2, np.nan, 0.6, 1.0]))
  assert row["val_accuracy"] is None and row["val_ci95"] is None
  assert row["val_diverged_tasks"] == 1 and row["score"] == pytest.approx(1.8 / 4)
  json.dumps({k: v for k, v in row.items()}, allow_nan=False)
  row = validation_row(np.array([0.2, 0.4, 0.6]))
  assert row["val_accuracy"] == pytest.approx(0.4) and row["score"] == pytest.approx(0.4)
  assert "val_diverged_tasks" not in row


def test_a_leg_without_validation_tests_its_final_parameters(tmp_path, synthetic_data):
  """A run validated up to step 20, then resumed to 30 with eval_every=0: the
  test uses step 30's parameters, not the first leg's best, and a re-test picks
  the checkpoint eval.json names (_tested_step)."""
  workdir = str(tmp_path / "run")
  run = lambda **kw: train_and_evaluate(
      tiny_fewshot(steps_per_call=10, log_every=10, eval_max_steps=1, test_every_step=False,
                   **kw), workdir, progress=False)
  first = run(num_steps=20, eval_every=10)
  assert first["params"] == "best validation" and first["best_step"] in (10, 20)
  assert _tested_step(workdir, [10, 20]) == (first["best_step"], "best validation")
  second = run(num_steps=30, eval_every=0)
  assert second["params"] == "final" and second["best_step"] is None
  assert second["val_tasks"] == 0
  # A re-test restores what eval.json says its test used: here step 30.
  assert _tested_step(workdir, [10, 20, 30]) == (30, "newest")
  assert _tested_step(workdir, [10, 20]) == (None, None)  # older than the checkpoints
  assert _tested_step(workdir, [10, 20, 30, 40]) == (None, None)  # a later leg saved 40
  with open(os.path.join(workdir, "eval.json")) as f:
    tested = json.load(f)
  for bad in ([], dict(tested, best_step=True), dict(tested, iterations="30")):
    with open(os.path.join(workdir, "eval.json"), "w") as f:
      json.dump(bad, f)
    assert _tested_step(workdir, [10, 20, 30]) == (None, None)
  os.remove(os.path.join(workdir, "eval.json"))
  assert _tested_step(workdir, [10, 20, 30]) == (None, None)


def test_eval_batch_must_divide_val_tasks_only_where_validation_runs():
  with pytest.raises(config_lib.ConfigError,
                     match=r"eval_batch=40 must divide eval_tasks=40 and val_tasks=20"):
    config_lib.validate(tiny_fewshot(eval_batch=40))
  config_lib.validate(tiny_fewshot(eval_batch=40, eval_every=0))  # no validation: accepted
  config_lib.validate(tiny_fewshot(eval_batch=40), testing=True)  # a re-test never validates
  with pytest.raises(config_lib.ConfigError, match=r"eval_batch=30 must divide eval_tasks=40$"):
    config_lib.validate(tiny_fewshot(eval_batch=30, eval_every=0))
