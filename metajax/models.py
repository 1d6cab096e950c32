"""Models, as flax modules. The last layer is always named "head" (ANIL)."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn


class MLP(nn.Module):
  """MLP with ReLU: x_NxD -> y_NxO (MAML's sinusoid net is 1-40-40-1)."""
  hidden: Sequence[int] = (40, 40)
  out: int = 1

  @nn.compact
  def __call__(self, x_NxD):
    h = x_NxD
    for i, width in enumerate(self.hidden):
      h = nn.relu(nn.Dense(width, name=f"hidden_{i}")(h))
    return nn.Dense(self.out, name="head")(h)
