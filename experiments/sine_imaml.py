r"""Sinusoid regression, iMAML (Rajeswaran et al. 2019): implicit meta-gradient
of the proximal inner problem, conjugate gradient with Hessian-vector products.

Command:
  python -m metajax.train --config experiments/sine_imaml.py --workdir runs/sine_imaml

Paper: no sinusoid result reported.
Ours (docs/RESULTS.md, "iMAML"): NOT a working recipe yet. After 3,000 meta-steps the query MSE
at K = 10 is 2.77 after 10 test steps (MAML: 0.20 after 5,000), and longer runs diverge
(inf at meta-step 5,440); these settings are the best of the first ten tried there. Testing by
plain GD (imaml_eval_lam=0) with inner steps of 0.002 x 50 reaches 0.29 after 3,000 meta-steps,
but those runs too diverge before 7,000 (RESULTS has the table).
"""

from metajax.config import sinusoid_base


def get_config():
  config = sinusoid_base()
  config.algorithm = "imaml"
  config.k_shot = 10
  config.inner_steps = 10     # gradient steps on L_support(phi) + lam/2 ||phi - theta||^2
  config.inner_lr = 0.01
  config.imaml_lam = 2.0      # proximal strength lambda
  config.cg_steps = 5         # conjugate-gradient iterations for (I + H/lam)^-1 grad
  config.cg_damping = 1.0
  config.meta_batch = 25
  config.outer_lr = 1e-3
  config.num_steps = 70_000
  config.eval_max_steps = 10  # test-time adaptation on the same proximal objective
  return config
