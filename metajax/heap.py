"""Freed heap handed back to the OS. Standard library only: the PyTorch
benchmark peers import it (through metajax.bench.memory), and their memory
must not count flax or metajax's training code."""

from __future__ import annotations

import ctypes


def return_freed_heap() -> bool:
  """Hands the heap's freed pages back to the OS (glibc's malloc_trim).

  glibc keeps freed memory mapped: after XLA compiles a conv-4 meta-step on CPU
  the process holds ~450 MB that the compiler used and freed (Omniglot 5w1s:
  885 MB resident right after compiling, 438 MB after this), and every later
  step would be counted on top of it. False where there is no glibc.
  """
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return True
  except (OSError, AttributeError):
    return False
