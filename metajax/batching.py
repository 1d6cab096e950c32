"""How a meta-batch of tasks is batched: one function, several strategies.

Mathematically every algorithm takes a mean over tasks, `mean_i f(task_i)`,
and the natural JAX program is `jax.vmap(f)(tasks).mean(0)`. What that
compiles to matters: with per-task adapted weights a vmapped convolution
becomes a grouped convolution, which XLA's CPU backend runs an order of
magnitude slower than a plain one, and holding every task's activations at
once costs memory. So `task_mean` offers:

  vmap    all tasks at once (best where grouped convolutions / batched
          matmuls are fast, e.g. GPUs; the literal design)
  scan    `lax.scan` over chunks of `chunk` tasks, vmapped within a chunk,
          summing as it goes: memory of one chunk, no grouped op when chunk=1
  unroll  the same chunks unrolled in Python inside the jit (no loop
          overhead, longer compiles)

All three compute the same numbers (tested); which is fastest depends on the
backend and shapes and is measured by `python -m metajax.bench`.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

STRATEGIES = ("vmap", "scan", "unroll")


def _split_chunks(tasks, n_chunks: int, chunk: int):
  return jax.tree.map(lambda a: a.reshape((n_chunks, chunk) + a.shape[1:]), tasks)


def task_mean(fn: Callable[[Any], Any], tasks, *, strategy: str = "vmap",
              chunk: int = 1):
  """mean_i fn(task_i) over the leading (task) axis of every leaf of `tasks`.

  Args:
    fn: one task -> pytree of arrays (e.g. (loss, grads)).
    tasks: pytree whose leaves have a leading axis of B tasks.
    strategy: one of STRATEGIES.
    chunk: tasks per chunk for "scan" and "unroll"; must divide B.
  """
  if strategy not in STRATEGIES:
    raise ValueError(f"task batching strategy {strategy!r} is not one of {STRATEGIES}")
  num_tasks = jax.tree.leaves(tasks)[0].shape[0]
  if strategy == "vmap":
    return jax.tree.map(lambda a: jnp.mean(a, axis=0), jax.vmap(fn)(tasks))
  if chunk < 1 or num_tasks % chunk:
    raise ValueError(f"task chunk {chunk} must be >= 1 and divide the meta-batch "
                     f"of {num_tasks} tasks")
  n_chunks = num_tasks // chunk
  chunks = _split_chunks(tasks, n_chunks, chunk)
  chunk_sum = lambda c: jax.tree.map(lambda a: jnp.sum(a, axis=0), jax.vmap(fn)(c))
  first = chunk_sum(jax.tree.map(lambda a: a[0], chunks))
  if strategy == "scan":
    add = lambda total, c: (jax.tree.map(jnp.add, total, chunk_sum(c)), None)
    total, _ = jax.lax.scan(add, first, jax.tree.map(lambda a: a[1:], chunks))
  else:
    total = first
    for i in range(1, n_chunks):
      total = jax.tree.map(jnp.add, total,
                           chunk_sum(jax.tree.map(lambda a, i=i: a[i], chunks)))
  return jax.tree.map(lambda a: a / num_tasks, total)


def resolve(strategy: str, chunk, conv: str, meta_batch: int, backend=None):
  """Turns "auto" choices into (strategy, chunk, conv_impl) for this backend.

  The rules come from measurements recorded in docs/RESULTS.md
  (`python -m metajax.bench --suite strategies`): on CPU a scan over single
  tasks, for the benchmark's 80-image tasks and MAML's 10-image Omniglot
  training tasks alike. Explicit choices pass through.
  """
  backend = backend or jax.default_backend()
  if strategy == "auto":
    strategy, auto_chunk = ("scan", 1) if backend == "cpu" else ("vmap", None)
    chunk = chunk or auto_chunk
  if conv == "auto":
    conv = "winograd" if backend == "cpu" else "xla"
  if strategy != "vmap":
    chunk = chunk or 1
    if meta_batch % chunk:
      raise ValueError(f"task chunk {chunk} must divide the meta-batch of {meta_batch}")
  return strategy, chunk, conv
