r"""ANIL on mini-ImageNet 5-way 5-shot.

Command (prepare the data once first: see docs/DATA.md):
  python -m metajax.train --config experiments/mini_5w5s_anil.py --workdir runs/mini_5w5s_anil

Paper: 61.5 ± 0.5 % (Raghu et al. 2020, Table 2).
Ours: 51.81 ± 0.67 % after the first 2,000 of 60,000 meta-steps (best validation at 1,500)
      on one CPU core (docs/RESULTS.md, "mini-ImageNet 5-way 5-shot, ANIL").
"""

from metajax.papers import paper_config


def get_config():
  config = paper_config("anil", "mini_imagenet", ways=5, shots=5)
  # The published settings it sets (edit any of them here):
  #   inner_steps=5, inner_lr=0.01, inner_optimizer='sgd', meta_batch=2, k_query=15,
  #   outer_optimizer='adam', outer_lr=0.001, outer_lr_schedule='constant',
  #   num_steps=60000, filters=32, eval_max_steps=10, eval_query=15
  return config
