r"""Meta-SGD on Omniglot 20-way 1-shot.

Command (prepare the data once first: see docs/DATA.md):
  python -m metajax.train --config experiments/omniglot_20w1s_metasgd.py --workdir runs/omniglot_20w1s_metasgd

Paper: 95.93 ± 0.38 % (Li et al. 2017, Tables 2-3).
Ours: 90.35 ± 0.27 % after 4,000 meta-steps (1 test step, best validation at 4,000), 23 min
      on one CPU core (docs/RESULTS.md).
"""

from metajax.papers import paper_config


def get_config():
  config = paper_config("metasgd", "omniglot", ways=20, shots=1)
  # The published settings it sets (edit any of them here):
  #   inner_steps=1, metasgd_lr_range=(0.005, 0.1) (the learned per-parameter rates
  #   start U[0.005, 0.1], as in Li et al.; inner_lr is not used), inner_optimizer='sgd',
  #   meta_batch=16, k_query=1,
  #   outer_optimizer='adam', outer_lr=0.001, outer_lr_schedule='constant',
  #   num_steps=60000, filters=64, eval_max_steps=1, eval_query=15,
  #   downsample='stride', bn_outer_only=True
  return config
