"""MAML++'s training-time schedules (Antoniou et al. 2019, "How to train your MAML").

Its other tricks are options of the shared core: per-layer per-step inner
rates (LSLR: `lr_per_step` in `metajax.inner`), per-step batch norm (`step_arg`
and `Conv4(bn="per_step")`), the cosine meta learning rate
(`outer_lr_schedule="cosine"`). What depends on the meta-step is here:

  MSL  multi-step loss: for the first `msl_steps` meta-steps the loss is
       sum_t v_t * (query loss after inner step t), with v annealed from
       uniform towards the last step; afterwards the last step's loss only.
  DA   derivative-order annealing: first-order meta-gradients for the first
       `first_order_steps` meta-steps, exact second order afterwards.

The paper changes both once per epoch of 500 meta-steps; here v changes
smoothly with the meta-step (the same end points), and a phase boundary is
a meta-step.
"""

from __future__ import annotations

import jax.numpy as jnp

# The paper's floor for the weight of each non-final step: 0.03 / T.
MSL_MIN_WEIGHT = 0.03


def msl_weights(step, inner_steps: int, msl_steps: int):
  """Per-step loss weights v_T at meta-step `step` (they sum to 1).

  At step 0 every inner step weighs 1/T; the non-final weights fall linearly
  to 0.03/T at `msl_steps` while the last rises to 1 - (T - 1) * 0.03 / T.
  """
  t = inner_steps
  progress = jnp.clip(jnp.asarray(step) / msl_steps, 0.0, 1.0)
  floor = MSL_MIN_WEIGHT / t
  early = jnp.maximum((1.0 - progress) / t, floor)
  last = jnp.minimum(1.0 / t + progress * (t - 1) / t, 1.0 - (t - 1) * floor)
  return jnp.concatenate([jnp.full((t - 1,), early), last[None]])


def phases(msl_steps: int, first_order_steps: int):
  """The training phases as [(first meta-step, first_order, msl)], by start.

  Within a phase the meta-gradient is one fixed program; `phase_index`
  picks it with `lax.switch`, so each is compiled once and only the
  current one runs.
  """
  starts = sorted({0, msl_steps, first_order_steps})
  return [(s, s < first_order_steps, s < msl_steps) for s in starts]


def phase_index(step, starts):
  """Index of the phase meta-step `step` is in (`starts` ascending, from 0)."""
  return jnp.sum(jnp.asarray(step) >= jnp.asarray(starts[1:], jnp.int32)).astype(jnp.int32)
