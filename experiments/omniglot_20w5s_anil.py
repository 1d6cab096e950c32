r"""ANIL on Omniglot 20-way 5-shot.

Command (prepare the data once first: see docs/DATA.md):
  python -m metajax.train --config experiments/omniglot_20w5s_anil.py --workdir runs/omniglot_20w5s_anil

Paper: 98.0 ± 0.3 % (Raghu et al. 2020, Table 2).
Ours: 79.58 ± 0.34 % after the first 1,000 of the 60,000 meta-steps (5 test steps, still
      rising fast), 33 min on one CPU core (docs/RESULTS.md).
"""

from metajax.papers import paper_config


def get_config():
  config = paper_config("anil", "omniglot", ways=20, shots=5)
  # The published settings it sets (edit any of them here):
  #   inner_steps=5, inner_lr=0.1, inner_optimizer='sgd', meta_batch=16, k_query=5,
  #   outer_optimizer='adam', outer_lr=0.001, outer_lr_schedule='constant',
  #   num_steps=60000, filters=64, eval_max_steps=5, eval_query=15,
  #   downsample='stride'
  return config
