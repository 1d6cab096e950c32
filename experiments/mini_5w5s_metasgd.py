r"""Meta-SGD on mini-ImageNet 5-way 5-shot.

Command (prepare the data once first: see docs/DATA.md):
  python -m metajax.train --config experiments/mini_5w5s_metasgd.py --workdir runs/mini_5w5s_metasgd

Paper: 64.03 ± 0.94 % (Li et al. 2017, Tables 2-3).
Ours: 59.68 ± 0.65 % after 6,500 of the 60,000 meta-steps (best validation at 6,500), one CPU
      core, 237 min; 58.41 ± 0.67 % after 6,000, 54.41 ± 0.66 % after 3,000 (docs/RESULTS.md).
"""

from metajax.papers import paper_config


def get_config():
  config = paper_config("metasgd", "mini_imagenet", ways=5, shots=5)
  # The published settings it sets (edit any of them here):
  #   inner_steps=1, metasgd_lr_range=(0.005, 0.1) (the learned per-parameter rates
  #   start U[0.005, 0.1], as in Li et al.; inner_lr is not used), inner_optimizer='sgd',
  #   meta_batch=2, k_query=15,
  #   outer_optimizer='adam', outer_lr=0.001, outer_lr_schedule='constant',
  #   num_steps=60000, filters=32, eval_max_steps=1, eval_query=15
  return config
