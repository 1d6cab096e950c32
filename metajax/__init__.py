"""metajax: gradient-based meta-learning as pure, jitted, vmapped JAX functions.

Public core (see the README for every option):
  adapt(loss_fn, params, support, *, steps, lr, first_order=False, mask=None, ...)
  maml_loss(loss_fn, params, task, *, steps, lr, first_order=False, mask=None, ...)
"""

from metajax.inner import adapt, inner_loop
from metajax.maml import maml_loss
from metajax.reptile import reptile_pseudo_grad

__all__ = ["adapt", "inner_loop", "maml_loss", "reptile_pseudo_grad"]
__version__ = "0.1.0"
