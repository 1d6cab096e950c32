r"""MAML (exact second order) on Omniglot 20-way 5-shot.

Command (prepare the data once first: see docs/DATA.md):
  python -m metajax.train --config experiments/omniglot_20w5s_maml.py --workdir runs/omniglot_20w5s_maml

Paper: 98.9 ± 0.2 % (Finn et al. 2017, Table 1).
Ours: 92.40 ± 0.18 % after the first 500 of 60,000 meta-steps on one CPU core
      (docs/RESULTS.md, "Omniglot 20-way 5-shot: MAML").
"""

from metajax.papers import paper_config


def get_config():
  config = paper_config("maml", "omniglot", ways=20, shots=5)
  # The published settings it sets (edit any of them here):
  #   inner_steps=5, inner_lr=0.1, inner_optimizer='sgd', meta_batch=16, k_query=5,
  #   outer_optimizer='adam', outer_lr=0.001, outer_lr_schedule='constant',
  #   num_steps=60000, filters=64, eval_max_steps=5, eval_query=15,
  #   downsample='stride', bn_outer_only=True
  return config
