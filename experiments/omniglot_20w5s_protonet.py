r"""Prototypical networks (the non-gradient baseline) on Omniglot 20-way 5-shot.

Command (prepare the data once first: see docs/DATA.md):
  python -m metajax.train --config experiments/omniglot_20w5s_protonet.py --workdir runs/omniglot_20w5s_protonet

Paper: 98.9 % (Snell et al. 2017, Table 1, Euclidean distance; trained 60-way).
Ours: 98.56 ± 0.07 % after the first 1,000 of 20,000 episodes on one CPU core:
      the 5-way file's run (the same training) re-tested at 20 ways
      (docs/RESULTS.md, "Omniglot 5-way and 20-way 5-shot: one 5-shot model").
"""

from metajax.papers import paper_config


def get_config():
  config = paper_config("protonet", "omniglot", ways=20, shots=5)
  # The published settings it sets (edit any of them here):
  #   ways_train=60, k_query=5, meta_batch=1, outer_lr=0.001, num_steps=20000,
  #   eval_max_steps=0, filters=64
  return config
