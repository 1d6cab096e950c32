r"""MAML++ (every switch on) on mini-ImageNet 5-way 1-shot.

Command (prepare the data once first: see docs/DATA.md):
  python -m metajax.train --config experiments/mini_5w1s_mamlpp.py --workdir runs/mini_5w1s_mamlpp

Paper: 52.15 ± 0.26 % (Antoniou et al. 2019, Table 2; an ensemble of the 5 best checkpoints).
Ours: 30.97 ± 0.64 % after the first 500 of the 50,000 meta-steps (1%), on one CPU core
      (docs/RESULTS.md, MAML++ section, "mini-ImageNet 5-way 1-shot: the first 500 meta-steps
      of the recipe").
"""

from metajax.papers import paper_config


def get_config():
  config = paper_config("mamlpp", "mini_imagenet", ways=5, shots=1)
  # The published settings it sets (edit any of them here; each MAML++ trick
  # is its own switch: lslr, msl_steps, first_order_steps, bn, outer_lr_schedule):
  #   lslr=True, bn='per_step', inner_steps=5, eval_max_steps=5, outer_lr=0.001,
  #   outer_lr_schedule='cosine', num_steps=50000, first_order_steps=0, inner_lr=0.01,
  #   meta_batch=2, k_query=15, filters=48, msl_steps=7500, outer_lr_min=0.001
  return config
