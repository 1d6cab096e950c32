"""The meta-batch split over devices gives the same numbers as one device.

The tests marked `eight` need 8 devices: in a normal run they are collected
once more by `test_on_8_cpu_devices`, which runs this file in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8 (8 CPU devices).
"""

import json
import os
import subprocess
import sys
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metajax import config as config_lib
from metajax import sharding
from metajax.algorithms import Algorithm, meta_gradient
from metajax.step import init_state, make_meta_step, make_train_chunk
from metajax.tasks import sinusoid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
eight = pytest.mark.skipif(
    jax.device_count() < 8,
    reason="needs 8 devices: runs inside test_on_8_cpu_devices (a subprocess)")


def test_on_8_cpu_devices():
  if jax.device_count() >= 8:
    pytest.skip("this process already has 8 devices")
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
             XLA_FLAGS=os.environ.get("XLA_FLAGS", "")
             + " --xla_force_host_platform_device_count=8")
  p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
                      os.path.abspath(__file__),
                      # the two-process test sets its own devices: once is enough
                      "-k", "not on_8_cpu and not two_processes"],
                     env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert p.returncode == 0, p.stdout[-5000:] + p.stderr[-2000:]
  summary = p.stdout.strip().splitlines()[-1]
  assert "skipped" not in summary and "passed" in summary, summary


def test_indivisible_meta_batch_is_a_clear_error():
  mesh8 = types.SimpleNamespace(size=8)
  with pytest.raises(sharding.ShardingError,
                     match=r"meta_batch=12 does not split evenly over 8 devices; use a "
                           r"multiple of 8 \(e.g. 8 or 16\)"):
    sharding.check_divisible(12, mesh8)
  with pytest.raises(sharding.ShardingError, match="task_chunk=3 must divide the 2 tasks"):
    sharding.check_divisible(16, mesh8, task_chunk=3, batching="scan")
  sharding.check_divisible(16, mesh8, task_chunk=2, batching="scan")


def test_too_many_devices_is_a_clear_error():
  n = jax.device_count()
  with pytest.raises(sharding.ShardingError, match=f"num_devices={n + 1}: this run sees {n}"):
    sharding.make_mesh(n + 1)


def test_cpu_devices_once_jax_has_started():
  jax.devices()  # JAX has started in this process
  n = len(jax.devices("cpu"))
  sharding.set_cpu_devices(0)  # JAX's default: nothing to do
  sharding.set_cpu_devices(n)  # what JAX already has: nothing to do
  with pytest.raises(sharding.ShardingError,
                     match=rf"cpu_devices={n + 1}: JAX already runs with {n} CPU device.*"
                           rf"xla_force_host_platform_device_count={n + 1}"):
    sharding.set_cpu_devices(n + 1)
  assert len(jax.devices("cpu")) == n


def test_auto_cpu_devices_splits_omniglot_runs_in_two():
  omniglot = config_lib.fewshot_base("omniglot")  # meta_batch 32
  auto = lambda c, **kw: sharding.auto_cpu_devices(c, **{"cores": 2, "xla_flags": "", **kw})
  assert auto(omniglot) == 2
  assert auto(omniglot, cores=16) == 2
  for config in (config_lib.fewshot_base("mini_imagenet"), config_lib.sinusoid_base()):
    assert auto(config) == 0  # measured slower (mini-ImageNet) or not measured
  assert auto(omniglot, cores=1) == 0
  assert auto(omniglot, distributed=True) == 0
  assert auto(omniglot, xla_flags="--xla_force_host_platform_device_count=4") == 0
  for key, value, want in (("num_devices", 1, 0), ("num_devices", 2, 2),
                           ("meta_batch", 5, 0), ("task_chunk", 16, 2),
                           ("task_chunk", 32, 0)):
    c = config_lib.fewshot_base("omniglot")
    c[key] = value
    assert auto(c) == want, (key, value)
  c = config_lib.fewshot_base("omniglot")
  c.batching, c.task_chunk = "vmap", 32  # vmap ignores task_chunk
  assert auto(c) == 2


def test_host_cores_takes_the_cgroup_cpu_quota(tmp_path):
  affinity = sharding.host_cores(str(tmp_path / "none"))
  def cores(files):
    root = tmp_path / str(len(list(tmp_path.iterdir())))
    for name, text in files.items():
      (root / name).parent.mkdir(parents=True, exist_ok=True)
      (root / name).write_text(text)
    return sharding.cgroup_cpu_quota(str(root)), sharding.host_cores(str(root))
  assert cores({}) == (None, affinity)                                   # no cgroup files
  assert cores({"cpu.max": "max 100000\n"}) == (None, affinity)         # v2, unlimited
  assert cores({"cpu.max": "100000 100000\n"}) == (1.0, 1)              # v2, 1 CPU
  assert cores({"cpu.max": "150000 100000\n"}) == (1.5, 1)              # throttled at 1.5
  assert cores({"cpu.max": "6400000 100000\n"}) == (64.0, min(affinity, 64))  # the quota caps
  v1 = lambda q: {"cpu/cpu.cfs_quota_us": q, "cpu/cpu.cfs_period_us": "100000\n"}
  assert cores(v1("-1\n")) == (None, affinity)
  assert cores(v1("50000\n")) == (0.5, 1)
  assert cores({"cpu,cpuacct/cpu.cfs_quota_us": "100000",
                "cpu,cpuacct/cpu.cfs_period_us": "100000"}) == (1.0, 1)
  assert cores({"cpu.max": "garbage\n"}) == (None, affinity)


def _sine(meta_batch=16):
  config = config_lib.sinusoid_base()
  config.meta_batch = meta_batch
  problem = sinusoid.Problem(config)
  params = problem.init_params(jax.random.PRNGKey(0))
  return problem, params


def _gradient(algo, loss_fn, meta_params, tasks, mesh, *carry):
  fn = sharding.shard_tasks(lambda mp, t, *c: meta_gradient(algo, loss_fn, mp, t, None, *c),
                            mesh)
  return jax.jit(fn)(sharding.place_state(meta_params, mesh), tasks,
                     *sharding.place_state(carry, mesh))


def _close(a, b, rtol):
  chex.assert_trees_all_equal_structs(a, b)  # zip below would drop a missing leaf
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=rtol * 1e-1)


@eight
# One case per distinct code path: fomaml, metasgd and anil meta-learn through
# the same maml_loss as maml (their 1-device gradients: test_algorithms).
@pytest.mark.parametrize("name,batching", [
    ("maml", "vmap"), ("reptile", "vmap"), ("reptile-carry", "vmap"), ("imaml", "vmap"),
    ("maml", "scan")])
def test_meta_gradient_same_on_1_and_8_devices(name, batching):
  # float64: iMAML's conjugate gradient amplifies float32 summation-order noise.
  with jax.enable_x64(True):
    problem, params = _sine()
    f64 = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)
    tasks = f64(problem.sample_tasks(jax.random.PRNGKey(1)))
    # reptile-carry: inner Adam from a carried state; its next state (the mean
    # over all tasks, count unchanged by the device mean) is compared too.
    carry = name == "reptile-carry"
    algo = Algorithm.named(name.split("-")[0], steps=2, inner_lr=0.01, batching=batching,
                           task_chunk=2, inner_optimizer="adam" if carry else "sgd",
                           carry_inner_adam=carry)
    carried = ({"count": jnp.asarray(7, jnp.int32),
                "nu": jax.tree.map(lambda p: 1e-3 + 0.0 * p, f64(params))},) if carry else ()
    inner_lr = jax.tree.map(lambda p: jnp.full_like(p, 0.01), params) \
        if algo.learn_inner_lr else None
    meta_params = f64({"params": params, "inner_lr": inner_lr})
    one = _gradient(algo, problem.loss_fn, meta_params, tasks, sharding.make_mesh(1), *carried)
    mesh8 = sharding.make_mesh(8)
    assert mesh8.size == 8
    eight_ = _gradient(algo, problem.loss_fn, meta_params, tasks, mesh8, *carried)
    _close(one, eight_, 1e-9)
    if carry:
      assert eight_[2]["count"].dtype == jnp.int32 and int(eight_[2]["count"]) == 9


@eight
def test_conv4_meta_gradient_same_on_1_and_8_devices():
  from metajax.tasks.episodes import sample_episodes
  from metajax.tasks.fewshot import Problem
  # Conv-4 with batch statistics: each device normalises its own tasks only.
  # First order keeps the two compiles short; second order across devices is
  # checked on the MLP above.
  problem = Problem(ways=3, filters=2, image_shape=(16, 16, 1), conv_impl="xla")
  images = jax.random.randint(jax.random.PRNGKey(2), (6, 5, 16, 16, 1), 0, 256
                              ).astype(jnp.uint8)
  tasks = sample_episodes(jax.random.PRNGKey(3), images, meta_batch=8, ways=3, shots=1,
                          queries=2)
  meta_params = {"params": problem.init_params(jax.random.PRNGKey(4)), "inner_lr": None}
  algo = Algorithm.named("fomaml", steps=1, inner_lr=0.4)
  one = _gradient(algo, problem.loss_fn, meta_params, tasks, sharding.make_mesh(1))
  eight_ = _gradient(algo, problem.loss_fn, meta_params, tasks, sharding.make_mesh(8))
  _close(one, eight_, 1e-4)


@eight
def test_20_meta_steps_give_the_same_params_on_1_and_8_devices():
  # MAML++ with every schedule switching inside the 20 steps: the meta-step
  # (which picks the phase) reaches every device. Then the same 8-device run
  # with params, LSLR rates and Adam's moments sharded over the devices.
  problem, _ = _sine()
  algo = Algorithm.named("mamlpp", steps=2, inner_lr=0.01, lslr=True, msl_steps=10,
                         first_order_steps=5)
  optimizer = optax.adam(1e-3)
  finals = []
  for devices, mode in ((1, "replicated"), (8, "replicated"), (8, "sharded")):
    mesh = sharding.make_mesh(devices)
    params = problem.init_params(jax.random.PRNGKey(0))  # fresh: the state is donated
    state = sharding.place_state(
        init_state(algo, params, optimizer, jax.random.PRNGKey(5)), mesh, mode)
    step = make_meta_step(algo, problem.loss_fn, problem.sample_tasks, optimizer,
                          mesh=mesh, param_sharding=mode)
    state, metrics = make_train_chunk(step, 20)(state)
    assert int(state.step) == 20 and np.all(np.isfinite(np.asarray(metrics["loss"])))
    # Where each array lives after the 20 jitted steps: the 40x40 kernel (and
    # its Adam moments) split 5 rows per device, the (1,) output bias whole.
    kernel = state.params["hidden_1"]["kernel"]
    mu_kernel = state.opt_state[0].mu["params"]["hidden_1"]["kernel"]
    bias = state.params["head"]["bias"]
    split = (5, 40) if mode == "sharded" else (40, 40)
    assert kernel.addressable_shards[0].data.shape == split
    assert mu_kernel.addressable_shards[0].data.shape == split
    assert bias.addressable_shards[0].data.shape == (1,)
    finals.append(sharding.host_tree(state.meta_params()))
  _close(finals[0], finals[1], 1e-4)
  _close(finals[0], finals[2], 1e-4)


@eight
def test_param_sharding_splits_the_largest_divisible_axis():
  mesh = sharding.make_mesh(8)
  spec = lambda shape, mode="sharded": tuple(sharding.leaf_sharding(shape, mesh, mode).spec)
  assert spec((3, 3, 64, 64)) == (None, None, "tasks", None)  # first of the equal largest
  assert spec((1600, 5)) == ("tasks", None)
  assert spec((5,)) == spec(()) == spec((4, 6)) == ()  # nothing divides by 8: replicated
  assert spec((64,), "replicated") == ()
  with pytest.raises(sharding.ShardingError, match=r"param_sharding='fsdp': use one of"):
    sharding.leaf_sharding((64,), mesh, "fsdp")


@eight
def test_training_cli_uses_all_devices_and_refuses_an_uneven_split(tmp_path, capsys):
  from metajax.train import main
  args = ["--config", os.path.join(ROOT, "experiments", "sine_maml.py"),
          "--config.num_steps=40", "--config.log_every=20", "--config.plots=false",
          "--config.eval_tasks=20", "--config.eval_shots=(5,)", "--config.meta_batch=24"]
  assert main([*args, "--workdir", str(tmp_path / "a")]) == 0
  result = json.load(open(tmp_path / "a" / "eval.json"))
  assert result["devices"] == 8  # same numbers as 1 device: the 20-step test above
  # Resumed with the state sharded over the 8 devices: restored into the new layout.
  assert main([*args, "--workdir", str(tmp_path / "a"), "--config.num_steps=60",
               "--config.param_sharding=sharded"]) == 0
  result = json.load(open(tmp_path / "a" / "eval.json"))
  assert (result["resumed_from_step"], result["num_steps"]) == (40, 60)
  capsys.readouterr()
  assert main([*args, "--workdir", str(tmp_path / "c"), "--config.meta_batch=25"]) == 2
  assert "meta_batch=25 does not split evenly over 8 devices" in capsys.readouterr().err
  # Trained on one device with meta_batch=25, re-tested on all 8: a test splits
  # no meta-batch, so it is not refused, and it scores what the run's test did.
  assert main([*args, "--workdir", str(tmp_path / "d"), "--config.meta_batch=25",
               "--config.num_devices=1"]) == 0
  from metajax.retest import retest
  again = retest(str(tmp_path / "d"), ["num_devices=0"])
  trained = json.load(open(tmp_path / "d" / "eval.json"))
  assert again["checkpoint_step"] == 40
  np.testing.assert_allclose(again["by_k_shot"]["5"]["mse"], trained["by_k_shot"]["5"]["mse"],
                             rtol=1e-5)


@eight
def test_fewshot_training_keeps_a_sharded_state(tmp_path, monkeypatch):
  # The image-task path with the state sharded: Reptile with its carried inner
  # Adam (a state the step computes inside shard_map), two calls of one
  # compiled 10-step chunk, so a layout that drifted would be refused.
  from metajax import fewshot
  from metajax.checkpoint import Checkpoints
  from metajax.step import init_state
  from metajax.tasks.fewshot import Problem
  images = np.asarray(jax.random.randint(jax.random.PRNGKey(0), (12, 6, 16, 16, 1), 0, 256),
                      np.uint8)
  monkeypatch.setattr(fewshot, "load_images", lambda config, split: images)
  # Validation and the test run on one device, not replicated on all 8.
  devices_evaluated_on, make_evaluator = [], fewshot.make_evaluator
  def evaluator(*args, **kwargs):
    evaluate = make_evaluator(*args, **kwargs)
    def spied(params, images, num_tasks):
      devices_evaluated_on.append(len(images.devices()))
      return evaluate(params, images, num_tasks)
    return spied
  monkeypatch.setattr(fewshot, "make_evaluator", evaluator)
  config = config_lib.fewshot_base("omniglot")
  config.update(dict(algorithm="reptile", inner_optimizer="adam", carry_inner_adam=True,
                     inner_lr=0.001, inner_steps=2, outer_optimizer="sgd", outer_lr=1.0,
                     filters=8, meta_batch=8, k_query=1, num_steps=20, steps_per_call=10,
                     log_every=10, eval_every=10, val_tasks=8, eval_tasks=8, eval_batch=8,
                     eval_max_steps=2, eval_query=1, conv_impl="xla", plots=False,
                     param_sharding="sharded"))
  result = fewshot.train_and_evaluate(config, str(tmp_path), progress=False)
  assert result["devices"] == 8 and result["iterations"] == 20
  assert devices_evaluated_on == [1, 1, 1]  # 2 validations, the test
  template = init_state(fewshot.algorithm(config),
                        Problem(ways=5, filters=8, image_shape=(16, 16, 1)).init_params(
                            jax.random.PRNGKey(0)), optax.sgd(1.0), jax.random.PRNGKey(1))
  mesh = sharding.make_mesh(8)
  checkpoints = Checkpoints(str(tmp_path / "checkpoints"))
  state, _ = checkpoints.restore(20, sharding.place_state(template, mesh, "sharded"))
  checkpoints.close()
  nu = state.adam_carry["nu"]["block_1"]["kernel"]  # 3x3x8x8: 1 input channel per device
  assert nu.addressable_shards[0].data.shape == (3, 3, 1, 8)
  assert int(state.adam_carry["count"]) == 40 and float(jnp.max(nu)) > 0


def test_two_processes_give_the_same_params_as_one(tmp_path):
  """Multi-host on one machine: 2 processes x 4 CPU devices, jax.distributed over
  localhost (gloo), with params and optimizer state sharded over all 8 devices
  (checkpointed and evaluated from their shards), against one process on one
  device."""
  import socket
  from metajax.checkpoint import load_arrays
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  args = [sys.executable, "-m", "metajax.train", "--config",
          os.path.join(ROOT, "experiments", "sine_maml.py"), "--config.num_steps=60",
          "--config.log_every=20", "--config.checkpoint_every=30", "--config.plots=false",
          "--config.eval_tasks=20", "--config.eval_shots=(5,)", "--config.meta_batch=24"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  procs = [subprocess.Popen(
      args + ["--workdir", str(tmp_path / "multi"), "--config.param_sharding=sharded",
              "--coordinator_address",
              f"localhost:{port}", "--num_processes", "2", "--process_id", str(i)],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outs)
  single = subprocess.run(args + ["--workdir", str(tmp_path / "single"),
                                  "--config.num_devices=1"],
                          env=dict(env, XLA_FLAGS=""), capture_output=True, text=True,
                          timeout=300)
  assert single.returncode == 0, single.stderr[-2000:]
  multi = json.load(open(tmp_path / "multi" / "eval.json"))
  assert (multi["devices"], multi["processes"]) == (8, 2)
  load = lambda d: load_arrays(str(tmp_path / d / "checkpoints" / "60"))
  _close(load("multi")["params"], load("single")["params"], 1e-4)
