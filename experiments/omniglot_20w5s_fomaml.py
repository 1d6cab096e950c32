r"""first-order MAML on Omniglot 20-way 5-shot.

Command (prepare the data once first: see docs/DATA.md):
  python -m metajax.train --config experiments/omniglot_20w5s_fomaml.py --workdir runs/omniglot_20w5s_fomaml

Paper: 97.9 ± 0.1 % (Nichol et al. 2018, Table 2 (Omniglot), "1st-order MAML + Transduction";
       Finn et al. 2017 report first-order MAML on mini-ImageNet only).
Ours: 93.19 ± 0.17 % after the first 1,000 of 60,000 meta-steps on one CPU core
      (docs/RESULTS.md, "Omniglot 20-way 5-shot: first-order MAML, the first 1,000 meta-steps").
"""

from metajax.papers import paper_config


def get_config():
  config = paper_config("fomaml", "omniglot", ways=20, shots=5)
  # The published settings it sets (edit any of them here):
  #   inner_steps=5, inner_lr=0.1, inner_optimizer='sgd', meta_batch=16, k_query=5,
  #   outer_optimizer='adam', outer_lr=0.001, outer_lr_schedule='constant',
  #   num_steps=60000, filters=64, eval_max_steps=5, eval_query=15,
  #   downsample='stride', bn_outer_only=True
  return config
