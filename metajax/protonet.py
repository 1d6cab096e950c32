"""Prototypical networks (Snell et al. 2017): the non-gradient-based baseline.

No inner loop: an episode's support images are embedded, each class's
prototype is the mean embedding of its support images, and a query image is
classified by softmax over negative squared Euclidean distances to the
prototypes. The meta-gradient is the plain gradient of the query
cross-entropy w.r.t. the embedding's parameters.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from metajax.tasks.fewshot import accuracy

EmbedFn = Callable  # (params, x_NxHxWxC) -> features_NxD


def prototypes(features_NxD, labels_N, ways: int):
  """Mean feature of each class: protos_WxD (class w = label w)."""
  onehot_NxW = jax.nn.one_hot(labels_N, ways, dtype=features_NxD.dtype)
  return (onehot_NxW.T @ features_NxD) / onehot_NxW.sum(0)[:, None]


def query_logits(embed: EmbedFn, params, task: dict, ways: int):
  """-||f(x_q) - c_w||^2 for every query image and class: logits_QxW."""
  (xs, ys), (xq, _) = task["support"], task["query"]
  # One forward pass over support and query, as the reference code: with
  # batch-statistics BN the two sets share their statistics.
  f_all = embed(params, jnp.concatenate([xs, xq]))
  protos_WxD = prototypes(f_all[:xs.shape[0]], ys, ways)
  fq_QxD = f_all[xs.shape[0]:]
  return -(jnp.sum(fq_QxD ** 2, 1, keepdims=True) - 2 * fq_QxD @ protos_WxD.T
           + jnp.sum(protos_WxD ** 2, 1)[None])


def episode_loss(embed: EmbedFn, params, task: dict, ways: int):
  """Mean query cross-entropy of one episode (what is differentiated)."""
  logits = query_logits(embed, params, task, ways)
  return optax.softmax_cross_entropy_with_integer_labels(logits, task["query"][1]).mean()


def episode_accuracy(embed: EmbedFn, params, task: dict, ways: int):
  logits = query_logits(embed, params, task, ways)
  return accuracy(logits, task["query"][1])
