r"""iMAML on mini-ImageNet 5-way 1-shot.

Command (prepare the data once first: see docs/DATA.md):
  python -m metajax.train --config experiments/mini_5w1s_imaml.py --workdir runs/mini_5w1s_imaml

Paper: 49.3 ± 1.88 % (Rajeswaran et al. 2019, Table 3, iMAML-HF: a Hessian-free inner
       solver, not the GD inner steps implemented here).
Ours: 35.20 ± 0.68 % after the first 1,000 of its 20,000 meta-steps (5%), on one CPU core
      (docs/RESULTS.md, iMAML section, "mini-ImageNet 5-way 1-shot: the first 1,000 meta-steps").
"""

from metajax.papers import paper_config


def get_config():
  config = paper_config("imaml", "mini_imagenet", ways=5, shots=1)
  # The published settings it sets (edit any of them here; metajax.papers says
  # where they come from):
  #   algorithm='imaml', inner_steps=16, inner_lr=0.01, imaml_lam=2.0, cg_steps=5,
  #   imaml_inner='gd_then_pull' (16 plain GD steps, then one step toward theta, as the
  #   authors' code), cg_damping=1.0, cg_lam_damping=10.0, outer_lr=0.001,
  #   outer_adam_eps=0.001, num_steps=20000, eval_max_steps=16,
  #   imaml_eval_lam=0.0 (test adapts by plain GD, as the authors' code),
  #   k_query=15, filters=32, meta_batch=4
  return config
