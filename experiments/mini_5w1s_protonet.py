r"""Prototypical networks (the non-gradient baseline) on mini-ImageNet 5-way 1-shot.

Command (prepare the data once first: see docs/DATA.md):
  python -m metajax.train --config experiments/mini_5w1s_protonet.py --workdir runs/mini_5w1s_protonet

Paper: 49.42 ± 0.78 % (Snell et al. 2017, Table 2, Euclidean distance; trained 30-way).
Ours: not reproduced yet; 31.15 ± 0.59 % after the first 1,000 of the 20,000 episodes (2-core CPU,
      6.4 s per 30-way episode; docs/RESULTS.md, ProtoNet).
"""

from metajax.papers import paper_config


def get_config():
  config = paper_config("protonet", "mini_imagenet", ways=5, shots=1)
  # The published settings it sets (edit any of them here):
  #   ways_train=30, k_query=15, meta_batch=1, outer_lr=0.001, num_steps=20000,
  #   eval_max_steps=0, filters=64
  return config
