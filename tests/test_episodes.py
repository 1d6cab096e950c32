"""On-device episodes: invariants, errors, fixed evaluation episodes, and a
short few-shot training run that learns (synthetic classes, no download)."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax import config as config_lib
from metajax import fewshot
from metajax.tasks.episodes import (EpisodeError, channel_stats, check_episode_shape,
                                    episodes_from_keys, sample_episodes)
from metajax.train import main, train_and_evaluate

C, M, H = 12, 9, 4


def id_images():
  """uint8 images_CxMxHxHx1 whose pixel (0, 0) is the class and (0, 1) the index."""
  x = np.zeros((C, M, H, H, 1), np.uint8)
  x[:, :, 0, 0, 0] = np.arange(C)[:, None]
  x[:, :, 0, 1, 0] = np.arange(M)[None, :]
  return x


def decode(x_float):
  ids = np.rint(np.asarray(x_float)[..., 0, :2, 0] * 255).astype(int)
  return ids[..., 0], ids[..., 1]  # class, image index


class EpisodeTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_invariants(self):
    ways, shots, queries, batch = 5, 2, 3, 64
    sample = self.variant(lambda key, images: sample_episodes(
        key, images, meta_batch=batch, ways=ways, shots=shots, queries=queries))
    tasks = sample(jax.random.PRNGKey(0), jnp.asarray(id_images()))
    (xs, ys), (xq, yq) = tasks["support"], tasks["query"]
    self.assertEqual(xs.shape, (batch, ways * shots, H, H, 1))
    self.assertEqual(xq.shape, (batch, ways * queries, H, H, 1))
    self.assertEqual(xs.dtype, jnp.float32)
    cs, is_ = decode(xs)
    cq, iq = decode(xq)
    perms = set()
    for b in range(batch):
      classes = np.concatenate([cs[b], cq[b]])
      labels = np.concatenate([np.asarray(ys[b]), np.asarray(yq[b])])
      # N distinct classes; each class has exactly one label and vice versa.
      self.assertEqual(len(set(cs[b])), ways)
      self.assertEqual(set(cq[b]), set(cs[b]))
      pairs = set(zip(classes, labels))
      self.assertEqual(len(pairs), ways)
      self.assertEqual(sorted(labels[:ways * shots].tolist()),
                       sorted(list(range(ways)) * shots))
      self.assertEqual(sorted(np.asarray(yq[b]).tolist()),
                       sorted(list(range(ways)) * queries))
      # K + Q distinct images of each class.
      for c in set(cs[b]):
        imgs = np.concatenate([is_[b][cs[b] == c], iq[b][cq[b] == c]])
        self.assertEqual(len(imgs), shots + queries)
        self.assertEqual(len(set(imgs)), shots + queries)
      perms.add(tuple(labels[::shots][:ways]))
    # The label of the first class varies: labels are permuted per episode.
    self.assertGreater(len(perms), batch // 2)

  @chex.variants(with_jit=True, without_jit=True)
  def test_shuffled_support_is_the_same_episode_reordered(self):
    kw = dict(meta_batch=16, ways=5, shots=4, queries=2)
    images = jnp.asarray(id_images())
    plain = sample_episodes(jax.random.PRNGKey(3), images, **kw)
    mixed = self.variant(lambda key, im: sample_episodes(
        key, im, shuffle_support=True, **kw))(jax.random.PRNGKey(3), images)
    np.testing.assert_array_equal(mixed["query"][0], plain["query"][0])
    cs, is_ = decode(plain["support"][0])
    ms, mi = decode(mixed["support"][0])
    moved = 0
    for b in range(16):
      before = sorted(zip(cs[b], is_[b], np.asarray(plain["support"][1][b])))
      after = sorted(zip(ms[b], mi[b], np.asarray(mixed["support"][1][b])))
      self.assertEqual(before, after)  # same (class, image, label) rows
      moved += not np.array_equal(cs[b], ms[b])
    self.assertGreater(moved, 12)  # and in a new order: not grouped by class

  def test_every_class_and_image_is_drawn(self):
    tasks = sample_episodes(jax.random.PRNGKey(1), jnp.asarray(id_images()),
                            meta_batch=200, ways=3, shots=1, queries=1)
    c, i = decode(tasks["support"][0])
    self.assertEqual(set(c.ravel()), set(range(C)))
    self.assertEqual(set(i.ravel()), set(range(M)))

  def test_standardize(self):
    x = np.random.RandomState(0).randint(0, 256, (3, 4, 5, 5, 3)).astype(np.uint8)
    mean, std = channel_stats(x)
    ref = x.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(mean, ref.mean(0), rtol=1e-5)
    np.testing.assert_allclose(std, ref.std(0), rtol=1e-4)
    tasks = sample_episodes(jax.random.PRNGKey(0), jnp.asarray(x), meta_batch=2, ways=3,
                            shots=2, queries=2, mean=mean, std=std)
    raw = sample_episodes(jax.random.PRNGKey(0), jnp.asarray(x), meta_batch=2, ways=3,
                          shots=2, queries=2)
    np.testing.assert_allclose(tasks["support"][0],
                               (raw["support"][0] - mean) / std, rtol=1e-5, atol=1e-6)


def test_impossible_episodes_name_the_numbers():
  with pytest.raises(EpisodeError, match=r"20-way .* 20 classes .* only 12"):
    check_episode_shape((12, 20, 28, 28, 1), ways=20, shots=1, queries=1,
                        split="test split")
  with pytest.raises(EpisodeError, match=r"need 21 images per class .* has 20"):
    check_episode_shape((50, 20, 28, 28, 1), ways=5, shots=1, queries=20)
  with pytest.raises(EpisodeError, match=r"5-way episodes need 5 classes .* only 4$"):
    sample_episodes(jax.random.PRNGKey(0), jnp.zeros((4, 3, 2, 2, 1), jnp.uint8),
                    meta_batch=1, ways=5, shots=1, queries=1)


# ------------------------------------------------------------ training runs
def prototype_split(key, classes, per_class=20, size=16):
  """Synthetic classes: a random binary glyph per class, pixels flipped with p=0.1."""
  k_proto, k_noise = jax.random.split(key)
  proto = jax.random.bernoulli(k_proto, 0.3, (classes, 1, size, size, 1))
  flip = jax.random.bernoulli(k_noise, 0.1, (classes, per_class, size, size, 1))
  return np.asarray(jnp.logical_xor(proto, flip), np.uint8) * 255


@pytest.fixture
def synthetic_data(monkeypatch):
  splits = {"train": prototype_split(jax.random.PRNGKey(0), 60),
            "validation": prototype_split(jax.random.PRNGKey(1), 15),
            "test": prototype_split(jax.random.PRNGKey(2), 20)}
  monkeypatch.setattr(fewshot, "load_images", lambda config, split: splits[split])
  return splits


def tiny_fewshot(**overrides):
  c = config_lib.fewshot_base("omniglot")
  c.update(dict(filters=8, meta_batch=4, num_steps=120, steps_per_call=20, log_every=40,
                eval_every=60, val_tasks=20, eval_tasks=40, eval_batch=20,
                eval_max_steps=3, eval_query=5, k_query=2, plots=False))
  c.update(overrides)
  return c


# mamlpp with every switch (it is second-order MAML with them on; each phase of
# its schedules runs); fomaml: test_datasets, on real data.
# mamlpp's 2 x 120 second-order steps run longer than they compile.
@pytest.mark.parametrize("algorithm", [
    pytest.param("mamlpp", marks=pytest.mark.xla_optimized), "reptile"])
def test_short_training_beats_chance(tmp_path, synthetic_data, algorithm):
  extra = {
      "reptile": dict(inner_steps=3, inner_lr=0.1, outer_optimizer="sgd", outer_lr=1.0),
      "mamlpp": dict(inner_steps=2, inner_lr=0.4, lslr=True, bn="per_step", msl_steps=60,
                     first_order_steps=30, outer_lr_schedule="cosine", outer_lr_min=1e-4,
                     conv_impl="xla", batching="vmap"),  # the quickest to compile
  }[algorithm]
  r = train_and_evaluate(tiny_fewshot(algorithm=algorithm, **extra), str(tmp_path),
                         progress=False)
  assert r["metric"] == "accuracy" and r["steps"] == [0, 1, 2, 3]
  assert len(r["accuracy"]) == 4 and r["num_tasks"] == 40
  # 5-way: chance is 20%. Before adaptation the model cannot beat chance,
  # since labels are permuted per episode; after it, it clearly does.
  assert abs(r["accuracy"][0] - 0.2) < 0.08, r["accuracy"]
  # Twice chance. (The products' float32 summation order moves this short run
  # by a few points: Reptile 0.428 with the AVX2 build of the kernel-gradient
  # kernel, above 0.45 with XLA's products or the AVX-512 build.)
  assert r["final_accuracy"] > 0.4, r["accuracy"]
  assert r["final_accuracy"] - r["final_ci95"] > 0.3
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [row["step"] for row in rows if "val_accuracy" in row] == [60, 120]
  assert r["best_step"] in (60, 120) and r["params"] == "best validation"
  assert (tmp_path / "checkpoints").is_dir()
  saved = json.load(open(tmp_path / "eval.json"))
  for key in ("algorithm", "ways", "k_shot", "k_query_train", "eval_query",
              "inner_steps_train", "inner_steps_test", "bn", "bn_in_inner_loop", "downsample",
              "iterations", "train_wall_s"):
    assert key in saved
  # The results table puts ours beside the paper's number for the cell.
  from metajax.papers import PUBLISHED, format_published
  from metajax.results import fewshot_table
  table = fewshot_table(str(tmp_path.parent))
  paper = PUBLISHED[(algorithm, "omniglot", 5, 1)]
  assert f"| {100 * r['final_accuracy']:.2f} ± {100 * r['final_ci95']:.2f} |" in table
  assert f"| {format_published(paper)} |" in table


def test_evaluation_episodes_are_fixed_by_the_seed(synthetic_data):
  config = tiny_fewshot()
  algo = fewshot.algorithm(config)
  from metajax.tasks.fewshot import Problem
  problem = Problem(ways=5, filters=8, image_shape=(16, 16, 1), conv_impl="im2col")
  evaluate = fewshot.make_evaluator(config, algo, problem, None, None)
  images = jnp.asarray(synthetic_data["test"])
  mp = {"params": problem.init_params(jax.random.PRNGKey(0)), "inner_lr": None}
  a = evaluate(mp, images, 40)
  np.testing.assert_array_equal(a, evaluate(mp, images, 40))
  config.eval_seed += 1
  other = fewshot.make_evaluator(config, algo, problem, None, None)(mp, images, 40)
  assert not np.array_equal(a, other)


def test_evaluation_episodes_do_not_depend_on_eval_batch(synthetic_data):
  # Episode i comes from its own key, so 1 or 8 per jitted call score the
  # same 8 episodes, each with the same accuracy (up to rounding in the model's
  # batched ops; the accuracies are counts over 25 query images).
  from metajax.tasks.fewshot import Problem
  problem = Problem(ways=5, filters=8, image_shape=(16, 16, 1), conv_impl="im2col")
  images = jnp.asarray(synthetic_data["test"])
  mp = {"params": problem.init_params(jax.random.PRNGKey(0)), "inner_lr": None}
  acc = {}
  for eval_batch in (1, 8):
    config = tiny_fewshot(eval_batch=eval_batch)
    evaluate = fewshot.make_evaluator(config, fewshot.algorithm(config), problem, None, None)
    acc[eval_batch] = evaluate(mp, images, 8)
  assert acc[1].shape == (8, config.eval_max_steps + 1)
  assert len({tuple(row) for row in acc[1]}) > 1  # episodes differ: a reordering would show
  np.testing.assert_allclose(acc[8], acc[1], atol=1e-6)


def test_every_model_and_algorithm_sees_the_same_evaluation_episodes(monkeypatch):
  """The episodes an evaluator draws are recorded and compared across models
  (two initialisations), algorithms (MAML and ProtoNet) and evaluators, and
  against episode i drawn here alone from fold_in(PRNGKey(eval_seed), i)."""
  seen = []

  def recording(keys, images, **kw):
    tasks = episodes_from_keys(keys, images, **kw)
    jax.debug.callback(lambda t: seen.append(jax.tree.map(np.asarray, t)), tasks)
    return tasks

  monkeypatch.setattr(fewshot, "episodes_from_keys", recording)
  from metajax.tasks.fewshot import Problem
  images = jnp.asarray(id_images())
  runs = []
  for algorithm, init_seed in (("maml", 0), ("maml", 1), ("protonet", 2)):
    config = tiny_fewshot(algorithm=algorithm, eval_batch=4)
    algo = fewshot.algorithm(config)
    problem = Problem(ways=5, filters=4, image_shape=(H, H, 1), conv_impl="im2col",
                      head=algorithm != "protonet", downsample="stride")
    mp = {"params": problem.init_params(jax.random.PRNGKey(init_seed)), "inner_lr": None}
    seen.clear()
    fewshot.make_evaluator(config, algo, problem, None, None)(mp, images, 8)
    runs.append(list(seen))
  base = jax.random.PRNGKey(tiny_fewshot().eval_seed)
  alone = [jax.tree.map(lambda a: np.asarray(a)[0], episodes_from_keys(
      jax.random.fold_in(base, i)[None], images, ways=5, shots=1, queries=5))
      for i in range(8)]
  for run in runs:
    assert len(run) == 2                               # 2 calls of eval_batch 4
    for b, got in enumerate(run):
      for j in range(4):
        jax.tree.map(lambda g, w: np.testing.assert_array_equal(g[j], w), got, alone[4 * b + j])


@pytest.mark.parametrize("algorithm,extra", [
    ("maml", {}),
    ("mamlpp", dict(lslr=True, bn="per_step")),  # step t's BN set and rate
    ("metasgd", {}),
    ("anil", {}),
    ("imaml", dict(imaml_eval_lam=2.0)),  # adapts on the proximal objective
])
def test_validation_pass_equals_the_last_step_of_the_full_one(synthetic_data, algorithm,
                                                              extra):
  """Validation computes only the query loss after the last step; it must be
  the last column of the per-step evaluation (the test's), which observes the
  query inside the scan over steps."""
  from metajax.evaluate import adaptation_losses
  from metajax.step import init_state, make_outer_optimizer
  config = tiny_fewshot(algorithm=algorithm, inner_steps=3, **extra)
  algo = fewshot.algorithm(config)
  problem = fewshot.problem_for(config, synthetic_data["test"].shape[2:])
  params = problem.init_params(jax.random.PRNGKey(0))
  state = init_state(algo, params, make_outer_optimizer(config), jax.random.PRNGKey(1))
  # Make every step's BN set and learned rate different, so a wrong step index shows.
  keys = iter(jax.random.split(jax.random.PRNGKey(2), 64))
  noisy = lambda t: jax.tree.map(
      lambda x: x * (1 + 0.3 * jax.random.uniform(next(keys), x.shape)), t)
  mp = dict(state.adaptation_params(), params=noisy(state.params))
  if mp.get("inner_lr") is not None:
    mp["inner_lr"] = noisy(mp["inner_lr"])
  tasks = sample_episodes(jax.random.PRNGKey(3), jnp.asarray(synthetic_data["test"]),
                          meta_batch=6, ways=5, shots=1, queries=5)
  full_BxS = adaptation_losses(algo, problem.loss_fn, mp, tasks, steps=3)
  last_Bx1 = jax.jit(lambda mp, tasks: adaptation_losses(
      algo, problem.loss_fn, mp, tasks, steps=3, last_only=True))(mp, tasks)
  assert full_BxS.shape == (6, 4) and last_Bx1.shape == (6, 1)
  np.testing.assert_allclose(last_Bx1[:, 0], full_BxS[:, -1], rtol=2e-5)
  assert not np.allclose(full_BxS[:, -1], full_BxS[:, -2])  # the steps do differ
  zero = adaptation_losses(algo, problem.loss_fn, mp, tasks, steps=0, last_only=True)
  np.testing.assert_allclose(zero[:, 0], full_BxS[:, 0], rtol=2e-5)


def test_impossible_episode_is_a_clear_cli_error(tmp_path, synthetic_data, capsys):
  import os
  exp = tmp_path / "exp.py"
  exp.write_text("from metajax.config import fewshot_base\n"
                 "def get_config():\n  return fewshot_base('omniglot')\n")
  code = main(["--config", str(exp), "--workdir", str(tmp_path / "run"),
               "--config.ways=30", "--config.num_steps=1"])
  assert code == 2
  err = capsys.readouterr().err
  assert "30-way" in err and "15" in err, err
  assert not os.path.exists(tmp_path / "run" / "eval.json")
