"""Replicated vs sharded train state over D devices: memory per device and time.

  python -m metajax.bench.sharding --preset omni_5w1s --devices 8 [--iters 3] [--out F.json]

On a CPU-only machine the D devices are XLA's host-platform devices (set here
before JAX starts), so the time per meta-step says what the layouts cost in
communication on this machine, not what D accelerators would take. For each
`param_sharding` it reports the train state held per device between steps
(params, optimizer state, step, key: the shards on device 0), XLA's memory
analysis of the jitted meta-step (per device), compile time and the median
time per meta-step, and reports the largest difference between the two
layouts' parameters after the same steps.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def _state_bytes_on_first_device(state) -> int:
  import jax
  first = jax.devices()[0]
  return sum(s.data.nbytes for leaf in jax.tree.leaves(state)
             for s in leaf.addressable_shards if s.device == first)


def run(preset: str, devices: int, iters: int) -> dict:
  import jax
  import numpy as np
  import optax

  from metajax import sharding
  from metajax.algorithms import Algorithm
  from metajax.batching import resolve
  from metajax.bench.presets import PRESETS, cell_remat
  from metajax.step import compile_lowered, init_state, make_meta_step, make_train_chunk
  from metajax.tasks.fewshot import Problem, synthetic_tasks

  p = PRESETS[preset]
  # The batching and convolution that `auto` picks for each device's share of
  # the meta-batch; the same program in both layouts.
  batching, chunk, conv = resolve("auto", None, "auto", p["meta_batch"] // devices)
  problem = Problem(ways=p["ways"], filters=p["filters"], image_shape=p["image_shape"],
                    conv_impl=conv)
  sample = lambda key: synthetic_tasks(key, meta_batch=p["meta_batch"], ways=p["ways"],
                                       shots=p["shots"], queries=p["queries"],
                                       image_shape=p["image_shape"])
  algo = Algorithm.named("maml", steps=p["steps"], inner_lr=p["inner_lr"],
                         batching=batching, task_chunk=chunk or 1,
                         remat=cell_remat({"preset": preset}))
  optimizer = optax.adam(1e-3)
  mesh = sharding.make_mesh(devices)
  sharding.check_divisible(p["meta_batch"], mesh)
  rows, finals = [], []
  for mode in sharding.PARAM_SHARDINGS:
    state = sharding.place_state(init_state(
        algo, problem.init_params(jax.random.PRNGKey(0)), optimizer, jax.random.PRNGKey(1)),
        mesh, mode)
    state_mb = _state_bytes_on_first_device(state) / 2**20
    step = make_meta_step(algo, problem.loss_fn, sample, optimizer, mesh=mesh,
                          param_sharding=mode)
    t0 = time.perf_counter()
    compiled = compile_lowered(make_train_chunk(step, 1).lower(state))
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    times = []
    for i in range(iters + 1):  # the first is a warm-up
      t = time.perf_counter()
      state, metrics = compiled(state)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - t)
    assert _state_bytes_on_first_device(state) / 2**20 == state_mb  # the layout is kept
    finals.append(sharding.host_tree(state.params))
    rows.append(dict(
        param_sharding=mode, state_mb_per_device=state_mb,
        xla_argument_mb=None if mem is None else mem.argument_size_in_bytes / 2**20,
        xla_temp_mb=None if mem is None else mem.temp_size_in_bytes / 2**20,
        compile_s=compile_s, median_s=float(np.median(times[1:])),
        min_s=float(np.min(times[1:])), max_s=float(np.max(times[1:])), n=iters))
  diff = max(float(np.max(np.abs(a - b))) for a, b in
             zip(jax.tree.leaves(finals[0]), jax.tree.leaves(finals[1])))
  return dict(preset=preset, devices=devices, batching=batching, task_chunk=chunk, conv=conv,
              remat=algo.remat_mode, steps_run=iters + 1, rows=rows,
              max_abs_param_diff=diff, backend=jax.default_backend(),
              jax_version=jax.__version__,
              num_params=sum(int(np.size(a)) for a in jax.tree.leaves(finals[0])))


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--preset", default="omni_5w1s")
  ap.add_argument("--devices", type=int, default=8)
  ap.add_argument("--iters", type=int, default=3)
  ap.add_argument("--out", help="also write the result as JSON here")
  args = ap.parse_args(argv)
  flags = os.environ.get("XLA_FLAGS", "")
  if "host_platform_device_count" not in flags:
    # D CPU devices where there is no accelerator (GPU and TPU ignore the flag);
    # read when JAX first creates its backends, which run() does.
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.devices}"
  result = run(args.preset, args.devices, args.iters)
  print(f"{result['preset']} MAML, {result['num_params']:,} params, {result['devices']} "
        f"{result['backend']} devices; same params after {result['steps_run']} steps "
        f"(max |diff| {result['max_abs_param_diff']:.1e})")
  for r in result["rows"]:
    print(f"  {r['param_sharding']:>10}: state {r['state_mb_per_device']:.3f} MiB/device, "
          f"XLA arguments {r['xla_argument_mb']:.2f} MiB, temp {r['xla_temp_mb']:.1f} MiB, "
          f"compile {r['compile_s']:.1f} s, {r['median_s']:.3f} s/meta-step "
          f"(min {r['min_s']:.3f}, max {r['max_s']:.3f})")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
