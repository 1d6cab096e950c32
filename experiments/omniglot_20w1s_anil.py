r"""ANIL on Omniglot 20-way 1-shot.

Command (prepare the data once first: see docs/DATA.md):
  python -m metajax.train --config experiments/omniglot_20w1s_anil.py --workdir runs/omniglot_20w1s_anil

Paper: 96.2 ± 0.5 % (Raghu et al. 2020, Table 2).
Ours: 90.42 ± 0.32 % after 5,000 meta-steps (5 test steps, best validation at 5,000), 29 min
      on one CPU core (docs/RESULTS.md); the same checkpoint tests at 92.56 ± 0.27 % after
      20 steps, the count the validation split picks (python -m metajax.retest ...
      --config.eval_max_steps=20).
"""

from metajax.papers import paper_config


def get_config():
  config = paper_config("anil", "omniglot", ways=20, shots=1)
  # The published settings it sets (edit any of them here):
  #   inner_steps=5, inner_lr=0.1, inner_optimizer='sgd', meta_batch=16, k_query=1,
  #   outer_optimizer='adam', outer_lr=0.001, outer_lr_schedule='constant',
  #   num_steps=60000, filters=64, eval_max_steps=5, eval_query=15,
  #   downsample='stride'
  return config
