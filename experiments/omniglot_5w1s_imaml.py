r"""iMAML on Omniglot 5-way 1-shot.

Command (prepare the data once first: see docs/DATA.md):
  python -m metajax.train --config experiments/omniglot_5w1s_imaml.py --workdir runs/omniglot_5w1s_imaml

Paper: 99.16 ± 0.35 % (Rajeswaran et al. 2019, Table 2, iMAML with GD inner steps;
       iMAML-HF: 99.50 ± 0.26).
Ours: not reproduced yet; 96.38 ± 0.35 % after the first 4,800 of the 20,000 meta-steps (2-core
      CPU, 259 min; best validated step 4,600), docs/RESULTS.md, iMAML; 96.25 ± 0.34 % after
      4,400, 94.25 ± 0.45 % after 2,400, 89.80 ± 0.56 % after 800. Before this file used the
      authors' inner loop and Adam epsilon, 600 meta-steps gave 85.60 ± 0.69 %.
"""

from metajax.papers import paper_config


def get_config():
  config = paper_config("imaml", "omniglot", ways=5, shots=1)
  # The published settings it sets (edit any of them here; metajax.papers says
  # where they come from):
  #   algorithm='imaml', inner_steps=16, inner_lr=0.1, imaml_lam=2.0, cg_steps=5,
  #   imaml_inner='gd_then_pull' (16 plain GD steps, then one step toward theta, as the
  #   authors' code), cg_damping=1.0, cg_lam_damping=10.0, outer_lr=0.001,
  #   outer_adam_eps=0.001, num_steps=20000, eval_max_steps=16,
  #   imaml_eval_lam=0.0 (test adapts by plain GD, as the authors' code),
  #   k_query=1, filters=64, meta_batch=32
  return config
