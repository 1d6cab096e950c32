r"""Prototypical networks (the non-gradient baseline) on mini-ImageNet 5-way 5-shot.

Command (prepare the data once first: see docs/DATA.md):
  python -m metajax.train --config experiments/mini_5w5s_protonet.py --workdir runs/mini_5w5s_protonet

Paper: 68.2 ± 0.66 % (Snell et al. 2017, Table 2, Euclidean distance; trained 20-way).
Ours: 56.09 ± 0.68 % after the first 2,000 of its 20,000 episodes on a 2-core CPU
(docs/RESULTS.md, ProtoNet section; validation still rising).
"""

from metajax.papers import paper_config


def get_config():
  config = paper_config("protonet", "mini_imagenet", ways=5, shots=5)
  # The published settings it sets (edit any of them here):
  #   ways_train=20, k_query=15, meta_batch=1, outer_lr=0.001, num_steps=20000,
  #   eval_max_steps=0, filters=64
  return config
