r"""Sinusoid regression, Meta-SGD (Li et al. 2017): per-parameter inner rates
alpha ~ U[0.005, 0.1] at init, learned jointly with theta by the exact
second-order meta-gradient.

Command:
  python -m metajax.train --config experiments/sine_metasgd.py --workdir runs/sine_metasgd

Paper (Meta-SGD Table 1; 1 step, K = 5/10/20): 0.90 / 0.53 / 0.31.
Ours (docs/RESULTS.md): see the sinusoid table.
"""

from metajax.config import sinusoid_base


def get_config():
  config = sinusoid_base()
  config.algorithm = "metasgd"
  config.k_shot = 10
  config.inner_steps = 1
  config.metasgd_lr_range = (0.005, 0.1)
  config.meta_batch = 25
  config.outer_lr = 1e-3
  config.num_steps = 70_000
  return config
