r"""Prototypical networks (the non-gradient baseline) on Omniglot 20-way 1-shot.

Command (prepare the data once first: see docs/DATA.md):
  python -m metajax.train --config experiments/omniglot_20w1s_protonet.py --workdir runs/omniglot_20w1s_protonet

Paper: 96.0 % (Snell et al. 2017, Table 1, Euclidean distance; trained 60-way).
Ours: 96.73 ± 0.19 % after 4,000 episodes (--config.num_steps=4000; this file sets 20,000
      at a constant rate), validation still rising (docs/RESULTS.md, 2026-11-29).
"""

from metajax.papers import paper_config


def get_config():
  config = paper_config("protonet", "omniglot", ways=20, shots=1)
  # The published settings it sets (edit any of them here):
  #   ways_train=60, k_query=5, meta_batch=1, outer_lr=0.001, num_steps=20000,
  #   eval_max_steps=0, filters=64
  return config
