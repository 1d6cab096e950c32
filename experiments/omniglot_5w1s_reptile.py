r"""Reptile on Omniglot 5-way 1-shot.

Command (prepare the data once first: see docs/DATA.md):
  python -m metajax.train --config experiments/omniglot_5w1s_reptile.py --workdir runs/omniglot_5w1s_reptile

Paper: 97.68 ± 0.04 % (Nichol et al. 2018, Table 2, transductive).
Ours: 97.62 ± 0.28 % after 16,000 meta-steps (--config.num_steps=16000: the outer rate anneals
      to 0 over 16k steps, not 100k), 92 min on one CPU core (docs/RESULTS.md).
"""

from metajax.papers import paper_config


def get_config():
  config = paper_config("reptile", "omniglot", ways=5, shots=1)
  # The published settings it sets (edit any of them here):
  #   inner_steps=5, inner_lr=0.001, inner_optimizer='adam', carry_inner_adam=True,
  #   meta_batch=5,
  #   k_shot_train=10, k_query=1, outer_optimizer='sgd', outer_lr=1.0,
  #   outer_lr_schedule='linear', inner_batch=10, num_steps=100000, filters=64, eval_max_steps=50,
  #   eval_query=15
  return config
