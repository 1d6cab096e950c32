"""The jitted outer update: (state, key) -> (state, metrics).

One meta-step samples a meta-batch of tasks on device, adapts to each
(vmapped), computes the meta-gradient and applies the optax update.
`make_train_chunk` runs `steps_per_call` of them inside one `lax.scan` so that
small models are not bound by Python dispatch; state is donated.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Any, Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from metajax.algorithms import Algorithm, meta_gradient
from metajax.heap import return_freed_heap
from metajax.inner import LossFn, PyTree, fresh_adam_carry
from metajax.sharding import constrain_state, place_state, shard_tasks


@flax.struct.dataclass
class TrainState:
  step: jax.Array        # int32 scalar: meta-steps taken
  params: PyTree         # theta
  inner_lr: PyTree       # learned rates (Meta-SGD per entry, LSLR per leaf and step), else None
  opt_state: Any         # optax state over {"params", "inner_lr"}
  key: jax.Array         # base key; step t uses fold_in(key, t)
  adam_carry: Any = None  # Reptile's carried inner-Adam state {"count", "nu"}, else None

  def meta_params(self) -> dict:
    """What the outer optimizer updates: theta and the learned inner rates."""
    return {"params": self.params, "inner_lr": self.inner_lr}

  def adaptation_params(self) -> dict:
    """What adapting to a new task starts from: `meta_params()`, plus the
    carried inner-Adam state (Reptile) where there is one."""
    return {**self.meta_params(), "adam_carry": self.adam_carry}


def make_outer_optimizer(config) -> optax.GradientTransformation:
  lr, end = config.outer_lr, config.outer_lr_min
  if config.outer_lr_schedule == "linear":
    lr = optax.linear_schedule(config.outer_lr, end, config.num_steps)
  elif config.outer_lr_schedule == "cosine":  # MAML++: to outer_lr_min at num_steps
    lr = optax.cosine_decay_schedule(config.outer_lr, config.num_steps,
                                     alpha=end / config.outer_lr)
  if config.outer_optimizer == "adam":
    return optax.adam(lr, eps=config.outer_adam_eps)
  return optax.sgd(lr)


def init_state(algo: Algorithm, params: PyTree,
               optimizer: optax.GradientTransformation, key, *,
               metasgd_lr_range=(0.005, 0.1)) -> TrainState:
  """Initial state; Meta-SGD's rates start U[metasgd_lr_range] per entry,
  LSLR's (MAML++) at algo.inner_lr for every leaf and inner step."""
  key, lr_key = jax.random.split(key)
  inner_lr = None
  if algo.lslr:
    inner_lr = jax.tree.map(lambda p: jnp.full((algo.steps,), algo.inner_lr, p.dtype),
                            params)
  elif algo.learn_inner_lr:
    lo, hi = metasgd_lr_range
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(lr_key, len(leaves))
    inner_lr = jax.tree.unflatten(treedef, [
        jax.random.uniform(k, p.shape, p.dtype, lo, hi)
        for k, p in zip(keys, leaves)])
  meta_params = {"params": params, "inner_lr": inner_lr}
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    inner_lr=inner_lr, opt_state=optimizer.init(meta_params),
                    key=key,
                    adam_carry=fresh_adam_carry(params) if algo.carry_inner_adam else None)



def initial_state(config, algo: Algorithm, problem, optimizer, mesh: Mesh) -> TrainState:
  """The state a run of `config` starts from, placed on `mesh`: parameters from
  problem.init_params and the task sampler's key, both from PRNGKey(config.seed)."""
  init_key, state_key = jax.random.split(jax.random.PRNGKey(config.seed))
  state = init_state(algo, problem.init_params(init_key), optimizer, state_key,
                     metasgd_lr_range=tuple(config.metasgd_lr_range))
  return place_state(state, mesh, config.param_sharding)

def make_meta_step(algo: Algorithm, loss_fn: LossFn,
                   sample_tasks: Callable[..., dict],
                   optimizer: optax.GradientTransformation, *,
                   mesh: Optional[Mesh] = None, param_sharding: str = "replicated",
                   skip_nonfinite: bool = False, head_split=None):
  """Returns the pure `meta_step(state, key, data=None) -> (state, metrics)`, metrics
  {"loss": scalar, "finite": bool} (with skip_nonfinite: "skipped" for "finite").

  `sample_tasks(key)` draws the meta-batch, or `sample_tasks(key, data)` when
  the tasks come from a data set held on device (`data`: e.g. the uint8 images
  of a split, passed as an argument so it is not baked into the program).
  `mesh`: split the meta-batch over its devices (`metajax.sharding`).
  `param_sharding`: "sharded" keeps the updated state split over the mesh as
  `metajax.sharding.place_state` placed it (default: replicated).
  `skip_nonfinite`: a step whose loss or meta-gradient is not finite leaves
  params and optimizer state unchanged (the step counter still advances, so
  the next step draws new tasks); its metrics say `skipped`. Without it the
  step is applied and its metrics say whether both were `finite`.
  `head_split`: ANIL's body/head split (`metajax.anil`), computing the body's
  features once per task.
  """
  gradient = shard_tasks(
      lambda meta_params, tasks, step, *carry: meta_gradient(
          algo, loss_fn, meta_params, tasks, step, *carry, head_split=head_split), mesh)

  def meta_step(state: TrainState, key, data=None) -> tuple[TrainState, dict]:
    tasks = sample_tasks(key) if data is None else sample_tasks(key, data)
    meta_params = state.meta_params()
    carry = () if state.adam_carry is None else (state.adam_carry,)
    # With a carried inner Adam, its next state (the mean over every task).
    loss, grads, *carry = gradient(meta_params, tasks, state.step, *carry)
    updates, opt_state = optimizer.update(grads, state.opt_state, meta_params)
    new_params = optax.apply_updates(meta_params, updates)
    new = state.replace(step=state.step + 1, params=new_params["params"],
                        inner_lr=new_params["inner_lr"], opt_state=opt_state,
                        adam_carry=carry[0] if carry else None)
    finite = jnp.isfinite(loss) & jnp.all(jnp.asarray(
        [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    if not skip_nonfinite:
      # `finite` too: a finite loss can come with a non-finite meta-gradient,
      # and the training loop must not checkpoint the parameters it produces.
      return constrain_state(new, mesh, param_sharding), {"loss": loss, "finite": finite}
    keep = lambda n, o: jnp.where(finite, n, o)
    new = jax.tree.map(keep, new.replace(step=state.step), state).replace(step=new.step)
    return constrain_state(new, mesh, param_sharding), {"loss": loss, "skipped": ~finite}

  return meta_step


# XLA CPU options for the meta-step, each with why (docs/RESULTS.md):
# - LLVM at -O1 ("LLVM at -O1"): in an alternating A/B on the conv-4 steps it
#   compiled in 58-90% of the default's time with no step-time change beyond
#   run-to-run noise (-O0 ran ~11x slower).
# - the older (non-MLIR) fusion emitters ("XLA's CPU fusion emitters"): the
#   compiler's peak memory fell from ~900 to ~450 MB on Omniglot 5w1s, the
#   running process by ~80-100 MB, with no step-time change beyond noise.
_CPU_OPTIONS = {"xla_backend_optimization_level": 1, "xla_cpu_use_fusion_emitters": False}


@functools.lru_cache(maxsize=None)
def _known_option(name: str, value) -> bool:
  """Whether this jaxlib's XLA has the compile option (older ones may not)."""
  try:
    jax.jit(lambda: jnp.zeros(())).lower().compile({name: value})
    return True
  except Exception as e:  # XLA refuses an option it lacks; anything else is a real error
    if "No such compile option" in str(e):
      return False
    raise


def _in_xla_flags(name: str) -> bool:
  """Whether XLA_FLAGS sets the option (a whole --name or --noname, not a substring)."""
  flags = os.environ.get("XLA_FLAGS", "")
  return re.search(rf"(^|\s)--(no)?{re.escape(name)}(=|\s|$)", flags) is not None


def compiler_options(backend: Optional[str] = None) -> Optional[dict]:
  """XLA options for compiling the meta-step program: on CPU, `_CPU_OPTIONS`.

  Pass them to `.lower(...).compile(...)` (`compile_lowered` does); not to
  `jax.jit`, which would refuse a jit carrying them inside another jit. None
  (XLA's defaults) off CPU and under JAX_DISABLE_MOST_OPTIMIZATIONS (these
  options would override its -O0); an option that XLA_FLAGS sets is left to
  XLA_FLAGS, and one this jaxlib lacks is left out.
  """
  backend = backend or jax.default_backend()
  if backend != "cpu" or jax.config.values.get("jax_disable_most_optimizations"):
    return None
  options = {k: v for k, v in _CPU_OPTIONS.items()
             if not _in_xla_flags(k) and _known_option(k, v)}
  return options or None


def compile_lowered(lowered):
  """`lowered.compile(compiler_options())`, with the freed heap returned to the
  OS (`return_freed_heap`) before and after: the compiler's peak then starts
  from what the process holds (Omniglot 5w1s MAML: 14 MB lower whole-process
  peak, docs/RESULTS.md). lowered: a `jax.stages.Lowered`, e.g.
  `make_train_chunk(meta_step, n).lower(state, data)`."""
  return_freed_heap()
  compiled = lowered.compile(compiler_options())
  return_freed_heap()
  return compiled


def make_train_chunk(meta_step, steps_per_call: int):
  """jit((state, data=None) -> (state, metrics_T)): `steps_per_call` meta-steps
  in a scan. The state is donated; `data` (the split on device) is not.

  Step t draws its tasks with `fold_in(state.key, t)`, so a run is a pure
  function of the seed however it is chunked. Compile it with
  `compile_lowered(chunk.lower(state, data))` for CPU's compiler options.
  """

  def chunk(state: TrainState, data=None):
    def body(state, _):
      return meta_step(state, jax.random.fold_in(state.key, state.step), data)
    return jax.lax.scan(body, state, None, length=steps_per_call)

  return jax.jit(chunk, donate_argnums=0)
