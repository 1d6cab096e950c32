r"""MAML (exact second order) on Omniglot 5-way 1-shot.

Command (prepare the data once first: see docs/DATA.md):
  python -m metajax.train --config experiments/omniglot_5w1s_maml.py --workdir runs/omniglot_5w1s_maml

Paper: 98.7 ± 0.4 % (Finn et al. 2017, Table 1).
Ours: 97.06 ± 0.30 % after 10,000 of the 60,000 meta-steps, 2-core CPU, with this file's model
      (40 min on one core; docs/RESULTS.md). The max-pool model with batch norm adapted in the
      inner loop (--config.downsample=max_pool --config.bn_outer_only=False): 97.54 ± 0.29 %
      after 3,000 meta-steps (83 min).
"""

from metajax.papers import paper_config


def get_config():
  config = paper_config("maml", "omniglot", ways=5, shots=1)
  # The published settings it sets (edit any of them here):
  #   inner_steps=1, inner_lr=0.4, inner_optimizer='sgd', meta_batch=32, k_query=1,
  #   outer_optimizer='adam', outer_lr=0.001, outer_lr_schedule='constant',
  #   num_steps=60000, filters=64, eval_max_steps=3, eval_query=15,
  #   downsample='stride', bn_outer_only=True
  return config
