r"""Sinusoid regression, ANIL (Raghu et al. 2020): the inner loop adapts only
the head (last linear layer); the body is meta-learned through the exact
second-order meta-gradient but never changes within a task.

Command:
  python -m metajax.train --config experiments/sine_anil.py --workdir runs/sine_anil

Paper: ANIL reports no sinusoid numbers.
Ours (docs/RESULTS.md): see the sinusoid table.
"""

from metajax.config import sinusoid_base


def get_config():
  config = sinusoid_base()
  config.algorithm = "anil"
  config.k_shot = 10
  config.inner_steps = 1
  config.inner_lr = 0.01
  config.meta_batch = 25
  config.outer_lr = 1e-3
  config.num_steps = 70_000
  return config
