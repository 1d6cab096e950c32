r"""Reptile on mini-ImageNet 5-way 5-shot.

Command (prepare the data once first: see docs/DATA.md):
  python -m metajax.train --config experiments/mini_5w5s_reptile.py --workdir runs/mini_5w5s_reptile

Paper: 65.99 ± 0.58 % (Nichol et al. 2018, Table 1, transductive).
Ours: 50.91 ± 0.69 % after the first 2,000 of 100,000 meta-steps on one CPU core:
      the 1-shot file's run (the same training) re-tested at 5 shots (docs/RESULTS.md,
      "mini-ImageNet 5-way 1-shot, Reptile").
"""

from metajax.papers import paper_config


def get_config():
  config = paper_config("reptile", "mini_imagenet", ways=5, shots=5)
  # The published settings it sets (edit any of them here):
  #   inner_steps=8, inner_lr=0.001, inner_optimizer='adam', carry_inner_adam=True,
  #   meta_batch=5,
  #   k_shot_train=15, k_query=1, outer_optimizer='sgd', outer_lr=1.0,
  #   outer_lr_schedule='linear', inner_batch=10, num_steps=100000, filters=32, eval_max_steps=50,
  #   eval_query=15
  return config
