r"""first-order MAML on mini-ImageNet 5-way 1-shot.

Command (prepare the data once first: see docs/DATA.md):
  python -m metajax.train --config experiments/mini_5w1s_fomaml.py --workdir runs/mini_5w1s_fomaml

Paper: 48.07 ± 1.75 % (Finn et al. 2017, Table 1).
Ours: 41.65 ± 0.73 % after the first 14,000 of the 60,000 meta-steps (best validation at
      10,800), 595 min on one CPU core (docs/RESULTS.md; MAML: 44.52 ± 0.74 % after 10,800).
"""

from metajax.papers import paper_config


def get_config():
  config = paper_config("fomaml", "mini_imagenet", ways=5, shots=1)
  # The published settings it sets (edit any of them here):
  #   inner_steps=5, inner_lr=0.01, inner_optimizer='sgd', meta_batch=4, k_query=15,
  #   outer_optimizer='adam', outer_lr=0.001, outer_lr_schedule='constant',
  #   num_steps=60000, filters=32, eval_max_steps=10, eval_query=15
  return config
