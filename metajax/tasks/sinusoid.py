"""Sinusoid regression (Finn et al. 2017, sec. 5.1), sampled on device.

A task is y = A sin(x - phase) with A ~ U[0.1, 5], phase ~ U[0, pi] and
x ~ U[-5, 5]; K support and Q query points per task.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sample_tasks(key, *, meta_batch: int, k_shot: int, k_query: int,
                 amplitude=(0.1, 5.0), phase=(0.0, jnp.pi), x_range=(-5.0, 5.0)):
  """Samples B = meta_batch tasks.

  Returns:
    {"support": (x_BxKx1, y_BxKx1), "query": (x_BxQx1, y_BxQx1),
     "amplitude": A_B, "phase": phase_B}
  """
  k_amp, k_phase, k_x = jax.random.split(key, 3)
  amp_B = jax.random.uniform(k_amp, (meta_batch,), minval=amplitude[0],
                             maxval=amplitude[1])
  phase_B = jax.random.uniform(k_phase, (meta_batch,), minval=phase[0],
                               maxval=phase[1])
  x_BxNx1 = jax.random.uniform(k_x, (meta_batch, k_shot + k_query, 1),
                               minval=x_range[0], maxval=x_range[1])
  y_BxNx1 = sine(x_BxNx1, amp_B[:, None, None], phase_B[:, None, None])
  return {
      "support": (x_BxNx1[:, :k_shot], y_BxNx1[:, :k_shot]),
      "query": (x_BxNx1[:, k_shot:], y_BxNx1[:, k_shot:]),
      "amplitude": amp_B,
      "phase": phase_B,
  }


def sine(x, amplitude, phase):
  return amplitude * jnp.sin(x - phase)


class Problem:
  """Sinusoid regression with MAML's MLP: model, loss and task sampler."""

  def __init__(self, config):
    from metajax.models import MLP  # local: keeps this module's sampler import-light
    self.config = config
    self.model = MLP(hidden=tuple(config.hidden), out=1)

  def init_params(self, key):
    # Jitted, as Conv4's (metajax.tasks.fewshot): op by op leaves compiled kernels resident.
    return jax.jit(lambda k: self.model.init(k, jnp.zeros((1, 1))))(key)["params"]

  def predict(self, params, x_Nx1):
    return self.model.apply({"params": params}, x_Nx1)

  def loss_fn(self, params, batch):
    """MSE of one task's batch (x_Nx1, y_Nx1)."""
    x_Nx1, y_Nx1 = batch
    return jnp.mean(jnp.square(self.predict(params, x_Nx1) - y_Nx1))

  def sample_tasks(self, key, *, meta_batch=None, k_shot=None, k_query=None):
    c = self.config
    return sample_tasks(
        key, meta_batch=meta_batch or c.meta_batch, k_shot=k_shot or c.k_shot,
        k_query=k_query or c.k_query, amplitude=tuple(c.amplitude),
        phase=tuple(c.phase), x_range=tuple(c.x_range))
