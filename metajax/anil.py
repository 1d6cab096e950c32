"""ANIL's inner loop on features computed once per task (Raghu et al. 2020).

ANIL adapts only the head, so the body's features of a task's support and
query images are the same before and after every inner step. Computing them
once and adapting the head on them gives the same loss and the same exact
meta-gradient as the masked inner loop over the whole model (which runs the
body again at every inner step), at a fraction of the cost:

  features_s = body(theta_body, x_support)   features_q = body(theta_body, x_query)
  L(theta) = head_loss(adapt(theta_head, features_s), features_q)

The meta-gradient w.r.t. theta_body flows through the features (the support's
through the adapted head); w.r.t. theta_head through the inner steps as in
MAML. `tests/test_algorithms.py` checks both against the masked loop.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

from metajax.inner import PyTree


class HeadSplit(NamedTuple):
  """A model split into a body and a top-level "head" module.

  features: `features(params, x_NxHxWxC) -> features_NxD`, the body's output
    (differentiable w.r.t. every non-head leaf of the full `params`).
  loss: `loss(head_params, (features_NxD, labels_N)) -> scalar`, where
    head_params = {"head": params["head"]}.
  metric: what evaluation reports after adaptation, same signature as `loss`
    (e.g. the accuracy); None: `loss`.
  """
  features: Callable
  loss: Callable
  metric: Optional[Callable] = None


def head_of(params: PyTree) -> PyTree:
  """The leaves ANIL adapts: {"head": params["head"]}."""
  return {"head": params["head"]}


def on_features(split: HeadSplit, params: PyTree, task: dict) -> dict:
  """One task with each part's images replaced by the body's features:
  {"support": (features_KxD, y_K), "query": (features_QxD, y_Q)}."""
  return {part: (split.features(params, x), y) for part, (x, y) in task.items()}
