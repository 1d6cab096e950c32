r"""Sinusoid regression, exact second-order MAML (Finn et al. 2017, sec. 5.1).

Command:
  python -m metajax.train --config experiments/sine_maml.py --workdir runs/sine_maml

Paper (Meta-SGD, Li et al. 2017, Table 1; 1 step, K = 5/10/20): 1.13 / 0.77 / 0.48.
Ours (docs/RESULTS.md): see the sinusoid table; MSE after 1 step at K = 10.
"""

from metajax.config import sinusoid_base


def get_config():
  config = sinusoid_base()
  config.algorithm = "maml"
  config.k_shot = 10          # K = 10; the table's others: --config.k_shot=5 --config.k_query=5
                              # (or 20 and 20), as scripts/sine_table.sh runs them
  config.inner_steps = 1
  config.inner_lr = 0.01
  config.meta_batch = 25
  config.outer_lr = 1e-3
  config.num_steps = 70_000
  return config
