"""metajax: gradient-based meta-learning as pure, jitted, vmapped JAX functions.

Public core (see the README for every option):
  adapt(loss_fn, params, support, *, steps, lr, first_order=False, mask=None, ...)
  maml_loss(loss_fn, params, task, *, steps, lr, first_order=False, mask=None, ...)
"""

import importlib

# Imported on first use (PEP 562), so that `import metajax.<module>` does not
# load JAX where a module does not need it: the PyTorch benchmark peers run
# under metajax.bench, and their memory must not count JAX's.
_PUBLIC = {"adapt": "metajax.inner", "inner_loop": "metajax.inner",
           "maml_loss": "metajax.maml", "reptile_pseudo_grad": "metajax.reptile"}

__all__ = list(_PUBLIC)
__version__ = "0.1.0"


def __getattr__(name):
  if name in _PUBLIC:
    return getattr(importlib.import_module(_PUBLIC[name]), name)
  raise AttributeError(f"module 'metajax' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + __all__)
