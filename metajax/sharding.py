"""Data parallelism over tasks: the meta-batch is split across devices.

A `Mesh` with one axis, "tasks", holds every device of every host
(`jax.devices()`). The data split is replicated; parameters and optimizer
state are replicated too, or, with `param_sharding="sharded"`, each of their
arrays is split over the same axis (ZeRO/FSDP-style storage: every device
keeps 1/D of the state between steps, XLA all-gathers the parameters for the
task computation and each device updates its own slice). Inside the jitted
meta-step the sampled meta-batch is handed to
`jax.shard_map` with the task axis split over the mesh, each device takes
the mean (loss, meta-gradient) of its own B/D tasks with the configured
batching strategy, and `lax.pmean` over "tasks" makes it the mean over all B.
So a config runs unchanged on 1 CPU, 8 GPUs or a TPU slice, and its numbers
do not depend on the device count beyond float summation order (tested).
Validation and the test run on each process's first device (`on_one_device`).
A host CPU may itself be split into several devices (`set_cpu_devices`).

Multi-host: call `jax.distributed.initialize()` first (`python -m
metajax.train --distributed ...`, see the README); every process then runs the
same program on the global mesh and XLA does the communication.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from metajax.config import ConfigError

TASK_AXIS = "tasks"
PARAM_SHARDINGS = ("replicated", "sharded")


class ShardingError(ConfigError):
  """A meta-batch / device-count combination that cannot be split evenly."""


# Tasks whose meta-step ran faster on a CPU split into 2 devices, in training
# runs and in the benchmark (docs/RESULTS.md, "Two CPU devices on two cores"):
# Omniglot's 28x28 images. mini-ImageNet's 84x84 ones ran slower.
AUTO_CPU_DEVICE_TASKS = ("omniglot",)


def set_cpu_devices(count: int, *, required: bool = True) -> None:
  """Splits the host CPU into `count` JAX devices (`jax_num_cpu_devices`), so
  that a meta-batch split over them runs as `count` concurrent streams of
  tasks; 0 leaves JAX's default. Only the CPU backend's device count changes.
  It must come before this process runs any JAX operation; after that, a count
  other than JAX's is an error, or (`required=False`) left as JAX has it.

  Why: XLA's CPU backend runs one op at a time, splitting each over the cores;
  the conv-4 step's many small ops split poorly. On a 2-core VM two devices
  made MAML's Omniglot training 1.9x faster, the benchmark's Omniglot steps
  9-15% (90-360 MB more: temporaries per device), and mini-ImageNet's step
  9-12% slower (docs/RESULTS.md, "Two CPU devices on two cores")."""
  if not count:
    return
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError:
    started = len(jax.devices("cpu"))
    if started != count and required:
      raise ShardingError(
          f"cpu_devices={count}: JAX already runs with {started} CPU device(s) in this "
          f"process; set cpu_devices before any JAX operation (as `python -m metajax.train` "
          f"does), or XLA_FLAGS=--xla_force_host_platform_device_count={count} before "
          "Python starts") from None


def auto_cpu_devices(config, *, distributed: bool = False, cores: Optional[int] = None,
                     xla_flags: Optional[str] = None) -> int:
  """What `cpu_devices=0` (auto) sets: 2 for a task of AUTO_CPU_DEVICE_TASKS
  whose meta-batch (and task_chunk) splits over 2, on a host with >= 2 cores
  (`host_cores`: the CPUs this process may run on, within a container's CPU
  quota), where nothing else chose the devices (one process; num_devices 0
  or 2; no device count in XLA_FLAGS or JAX_NUM_CPU_DEVICES); else 0 (JAX's
  default, one CPU device). On a GPU or TPU host the CPU devices go unused."""
  if cores is None:
    cores = host_cores()
  if xla_flags is None:
    xla_flags = os.environ.get("XLA_FLAGS", "")
  if (distributed or cores < 2 or "xla_force_host_platform_device_count" in xla_flags
      or jax.config.jax_num_cpu_devices >= 0  # set already, e.g. by JAX_NUM_CPU_DEVICES
      or config.get("task") not in AUTO_CPU_DEVICE_TASKS
      or config.get("num_devices", 0) not in (0, 2)
      or split_error(config.meta_batch, 2, config.get("task_chunk", 1),
                     config.get("batching", "auto"))):
    return 0
  return 2


def host_cores(cgroup_root: str = "/sys/fs/cgroup") -> int:
  """Whole cores this process may use: the CPUs it may run on (affinity),
  capped by its cgroup's CPU quota where one is set (a container given 2 CPUs
  on a 64-core host: 2). A quota of 1.5 CPUs counts as 1: two busy streams
  would be throttled. Reads cgroup v2's cpu.max, else v1's cpu.cfs_quota_us
  and cpu.cfs_period_us; unreadable or unlimited means no cap."""
  cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
           else os.cpu_count() or 1)
  quota = cgroup_cpu_quota(cgroup_root)
  return cores if quota is None else max(1, min(cores, int(quota)))


def cgroup_cpu_quota(cgroup_root: str = "/sys/fs/cgroup") -> Optional[float]:
  """The cgroup CPU quota in CPUs (quota / period), or None where there is
  none or it cannot be read."""
  def read(name):
    try:
      with open(os.path.join(cgroup_root, name)) as f:
        return f.read().split()
    except OSError:
      return None
  v2 = read("cpu.max")                       # "max 100000" or "200000 100000"
  if v2 is not None:
    pairs = [v2] if len(v2) == 2 else []
  else:                                      # v1: a quota of -1 means none
    pairs = [(read(f"{d}/cpu.cfs_quota_us"), read(f"{d}/cpu.cfs_period_us"))
             for d in ("cpu", "cpu,cpuacct")]
    pairs = [(q[0], p[0]) for q, p in pairs if q and p]
  for quota, period in pairs:
    try:
      quota, period = int(quota), int(period)
    except ValueError:
      continue
    if quota > 0 and period > 0:
      return quota / period
  return None


def start_cpu_devices(config, *, distributed: bool = False, required: bool = True) -> None:
  """Applies `config.cpu_devices` as a run starts: that many CPU devices, or
  with 0 `auto_cpu_devices`' choice, which a process where JAX already runs
  (e.g. a test) leaves as it is. `required=False` leaves an explicit count
  too (a re-test: testing runs on one device)."""
  count = config.get("cpu_devices", 0)
  if count:
    set_cpu_devices(count, required=required)
  else:
    set_cpu_devices(auto_cpu_devices(config, distributed=distributed), required=False)


def make_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D mesh over the first `num_devices` devices (0: all, on every host)."""
  devices = jax.devices()
  if num_devices < 0 or num_devices > len(devices):
    raise ShardingError(f"num_devices={num_devices}: this run sees {len(devices)} "
                        f"{devices[0].platform} device(s); use 0 (all) or 1..{len(devices)}")
  if num_devices and jax.process_count() > 1 and num_devices != len(devices):
    raise ShardingError(f"num_devices={num_devices} with {jax.process_count()} "
                        "processes: a multi-host run uses all devices (num_devices=0)")
  return Mesh(np.asarray(devices[:num_devices or len(devices)]), (TASK_AXIS,))


def split_error(meta_batch: int, devices: int, task_chunk: int = 1,
                batching: str = "vmap") -> Optional[str]:
  """Why `meta_batch` tasks do not give each of `devices` the same whole number
  of tasks (and of task_chunk chunks, unless vmapped); None where they do.
  Starts no JAX (auto_cpu_devices asks before JAX may start)."""
  d = devices
  if meta_batch % d:
    lo, hi = (meta_batch // d) * d, (meta_batch // d + 1) * d
    sizes = f"{lo} or {hi}" if lo else f"{hi}"
    return (f"meta_batch={meta_batch} does not split evenly over {d} devices; use a "
            f"multiple of {d} (e.g. {sizes})")
  if batching != "vmap" and (meta_batch // d) % task_chunk:
    return (f"task_chunk={task_chunk} must divide the {meta_batch // d} tasks each of "
            f"{d} devices gets (meta_batch={meta_batch}); pick a divisor of {meta_batch // d}")
  return None


def check_divisible(meta_batch: int, mesh: Mesh, task_chunk: int = 1,
                    batching: str = "vmap") -> None:
  """Raises ShardingError unless every device gets the same whole number of tasks."""
  error = split_error(meta_batch, mesh.size, task_chunk, batching)
  if error is None:
    return
  if meta_batch % mesh.size and jax.process_count() == 1:
    error += f" or set num_devices to a divisor of {meta_batch}"
  raise ShardingError(error)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def leaf_sharding(shape: tuple, mesh: Mesh, mode: str = "replicated") -> NamedSharding:
  """Where one state array lives: replicated, or (mode="sharded") split over
  the mesh along its largest axis that the device count divides. Arrays with
  no such axis (scalars, biases of odd size) stay replicated."""
  if mode not in PARAM_SHARDINGS:
    raise ShardingError(f"param_sharding={mode!r}: use one of {PARAM_SHARDINGS}")
  fits = [i for i, n in enumerate(shape) if n >= mesh.size and n % mesh.size == 0]
  if mode == "replicated" or mesh.size == 1 or not fits:
    return replicated(mesh)
  axis = max(fits, key=lambda i: shape[i])
  return NamedSharding(mesh, P(*(TASK_AXIS if i == axis else None
                                 for i in range(len(shape)))))


def state_shardings(tree, mesh: Mesh, mode: str = "replicated"):
  """`leaf_sharding` of every leaf of `tree` (arrays or tracers)."""
  return jax.tree.map(lambda x: leaf_sharding(np.shape(x), mesh, mode), tree)


def place_state(tree, mesh: Mesh, mode: str = "replicated"):
  """Places host or single-device values (the train state, a data split; the
  same in every process: same seed, same data) on `mesh`: replicated, or
  sharded per `leaf_sharding`."""
  def put(x, sharding):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  return jax.tree.map(put, tree, state_shardings(tree, mesh, mode))


def constrain_state(tree, mesh: Optional[Mesh], mode: str = "replicated"):
  """Inside jit: keeps the updated state where `place_state` put it."""
  if mesh is None or mesh.size == 1 or mode == "replicated":
    return tree
  return jax.lax.with_sharding_constraint(tree, state_shardings(tree, mesh, mode))


def shard_tasks(mean_over_tasks: Callable, mesh: Optional[Mesh]) -> Callable:
  """Wraps `mean_over_tasks(meta_params, tasks, *rest) -> pytree of means` so
  the tasks' leading axis is split over `mesh` and the per-device means are
  averaged; `rest` (e.g. the meta-step) is replicated.

  With `mesh=None` (or one device) the function is returned unchanged.
  """
  if mesh is None or mesh.size == 1:
    return mean_over_tasks

  def per_device(meta_params, tasks, *rest):
    # The replicated params become this device's own copy first: otherwise
    # jax.grad w.r.t. them inside shard_map sums the cotangent over devices,
    # so an inner (per-task) gradient would include every device's tasks.
    # So do other float inputs (a carried optimizer state that the tasks'
    # scans update); integers (the meta-step, a step count) are the same on
    # every device, stay so, and come back as they are: a mean would make
    # them floats.
    out = mean_over_tasks(_varying(meta_params), tasks, *_floats_varying(rest))
    return jax.tree.map(lambda x: jax.lax.pmean(x, TASK_AXIS) if _is_float(x) else x, out)

  def sharded(meta_params, tasks, *rest):
    return jax.shard_map(per_device, mesh=mesh,
                         in_specs=(P(), P(TASK_AXIS)) + (P(),) * len(rest),
                         out_specs=P())(meta_params, tasks, *rest)

  return sharded


def _is_float(x) -> bool:
  return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _floats_varying(tree):
  return jax.tree.map(lambda x: _varying(x) if _is_float(x) else x, tree)


def _varying(tree):
  if hasattr(jax.lax, "pcast"):
    return jax.lax.pcast(tree, TASK_AXIS, to="varying")
  return jax.lax.pvary(tree, TASK_AXIS)  # older JAX


def to_host(x) -> np.ndarray:
  """A replicated, sharded or single-device array as numpy, also on a
  multi-host mesh (a sharded one is gathered from every process)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def on_one_device(tree):
  """`tree` committed to this process's first device. Evaluation runs there:
  on arrays replicated over a mesh every device would compute the same
  episodes, which on CPU devices that share the cores (cpu_devices) is the
  same work done twice."""
  return jax.device_put(tree, jax.local_devices()[0])


def host_tree(tree):
  """`to_host` on every leaf (the multi-host-safe `jax.device_get`)."""
  return jax.tree.map(to_host, tree)
