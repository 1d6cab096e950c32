r"""Sinusoid regression, first-order MAML (Finn et al. 2017): inner gradients
are treated as constants, so the Hessian-vector terms of MAML are dropped.

Command:
  python -m metajax.train --config experiments/sine_fomaml.py --workdir runs/sine_fomaml

Paper: no published sinusoid number for first-order MAML.
Ours (docs/RESULTS.md): see the sinusoid table; MSE after 1 step at K = 10.
"""

from metajax.config import sinusoid_base


def get_config():
  config = sinusoid_base()
  config.algorithm = "fomaml"
  config.k_shot = 10
  config.inner_steps = 1
  config.inner_lr = 0.01
  config.meta_batch = 25
  config.outer_lr = 1e-3
  config.num_steps = 70_000
  return config
