r"""first-order MAML on Omniglot 5-way 5-shot.

Command (prepare the data once first: see docs/DATA.md):
  python -m metajax.train --config experiments/omniglot_5w5s_fomaml.py --workdir runs/omniglot_5w5s_fomaml

Paper: 99.2 ± 0.2 % (Nichol et al. 2018, Table 2 (Omniglot), "1st-order MAML + Transduction";
       Finn et al. 2017 report first-order MAML on mini-ImageNet only).
Ours: 98.62 ± 0.15 % after 6,000 of the 60,000 meta-steps (best validation at 6,000), 48 min
      on one CPU core (docs/RESULTS.md).
"""

from metajax.papers import paper_config


def get_config():
  config = paper_config("fomaml", "omniglot", ways=5, shots=5)
  # The published settings it sets (edit any of them here):
  #   inner_steps=1, inner_lr=0.4, inner_optimizer='sgd', meta_batch=32, k_query=5,
  #   outer_optimizer='adam', outer_lr=0.001, outer_lr_schedule='constant',
  #   num_steps=60000, filters=64, eval_max_steps=3, eval_query=15,
  #   downsample='stride', bn_outer_only=True
  return config
