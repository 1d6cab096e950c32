r"""Sinusoid regression, Reptile (Nichol et al. 2018).

theta <- theta + epsilon (mean_i phi_i - theta): outer SGD with epsilon = 1.0
linearly annealed to 0 (the paper's sine setting anneals its outer step), phi_i
after 5 inner SGD steps (lr 0.01) on the support set. Reptile's inner procedure
(5 steps) differs from the 1-step test of the sinusoid table, so the table also
reports 10 test-time steps.

Command:
  python -m metajax.train --config experiments/sine_reptile.py --workdir runs/sine_reptile

Paper: Reptile reports sine curves only as a figure (no 1-step MSE table).
Ours (docs/RESULTS.md): see the sinusoid table.
"""

from metajax.config import sinusoid_base


def get_config():
  config = sinusoid_base()
  config.algorithm = "reptile"
  config.k_shot = 10
  config.inner_optimizer = "sgd"   # or "adam" (beta1 = 0), as in the paper
  config.inner_steps = 5
  config.inner_lr = 0.01
  config.meta_batch = 25
  config.outer_optimizer = "sgd"
  config.outer_lr = 1.0
  config.outer_lr_schedule = "linear"
  config.num_steps = 70_000
  return config
