"""N-way K-shot image classification with the conv-4 model.

`Problem` holds the model and loss; `synthetic_tasks` draws episodes of the
real shapes from noise (for benchmarks: speed and memory do not depend on the
pixels).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import flax.linen as nn
import optax

from metajax.anil import HeadSplit
from metajax.models import Conv4
from metajax.tasks.episodes import to_float


def episode_labels(ways: int, shots: int):
  """[0]*shots + [1]*shots + ... : labels_(N*K,)."""
  return jnp.repeat(jnp.arange(ways), shots)


def noise_images(key, shape):
  """Uniform noise at 8-bit levels, as images are stored: float32 in {0, 1/255,
  ..., 1}, shape `shape`. Four pixels per random 32-bit word: on CPU threefry's
  float per pixel took 149 ms of a mini-ImageNet benchmark step (4 x 80
  images), this 25 ms (PyTorch's rand: 39 ms)."""
  n = math.prod(shape)
  words_W = jax.random.bits(key, (-(-n // 4),), jnp.uint32)
  levels = jax.lax.bitcast_convert_type(words_W, jnp.uint8).reshape(-1)[:n]
  return to_float(levels).reshape(shape)        # as stored images enter the model


def synthetic_tasks(key, *, meta_batch, ways, shots, queries, image_shape):
  """Noise episodes (noise_images): support (x_BxNKxHxWxC, y_BxNK), query
  (x_BxNQxHxWxC, y_BxNQ)."""
  k_s, k_q = jax.random.split(key)
  def part(k, per_class):
    x = noise_images(k, (meta_batch, ways * per_class) + tuple(image_shape))
    y = jnp.broadcast_to(episode_labels(ways, per_class), (meta_batch, ways * per_class))
    return x, y
  return {"support": part(k_s, shots), "query": part(k_q, queries)}


class Problem:
  """Conv-4 classification of one episode's batch (x_NxHxWxC, labels_N)."""

  def __init__(self, *, ways, filters, image_shape, bn="transductive",
               conv_impl="xla", bn_steps=1, head=True, downsample="max_pool"):
    self.image_shape = tuple(image_shape)
    self.model = Conv4(ways=ways, filters=filters, bn=bn, conv_impl=conv_impl,
                       bn_steps=bn_steps, head=head, downsample=downsample)

  def init_params(self, key):
    # Jitted: run op by op, flax's init leaves ~160 MB of small compiled
    # kernels resident for the rest of the process (same values either way).
    init = jax.jit(lambda k: self.model.init(k, jnp.zeros((2,) + self.image_shape)))
    return init(key)["params"]

  def embed(self, params, x_NxHxWxC):
    """Features_NxD of the body: every module but "head" (ProtoNet's embedding,
    with head=False; ANIL's features, metajax.anil)."""
    body = {k: v for k, v in params.items() if k != "head"}
    return self.model.clone(head=False).apply({"params": body}, x_NxHxWxC)

  def logits(self, params, x_NxHxWxC, step=0):
    """`step`: the inner step, which picks the BN parameters when bn="per_step"."""
    return self.model.apply({"params": params}, x_NxHxWxC, step)

  def loss_fn(self, params, batch, step=0):
    """Mean softmax cross-entropy of one task's batch."""
    x, labels = batch
    return cross_entropy(self.logits(params, x, step), labels)

  def accuracy(self, params, batch, step=0):
    x, labels = batch
    return accuracy(self.logits(params, x, step), labels)

  # ANIL's split (metajax.anil): the body's features once, the head on them.
  def head_logits(self, head, features_NxD):
    """Conv4's "head" layer (nn.Dense; `head` = {"head": its params}) on features."""
    return nn.Dense(self.model.ways).apply({"params": head["head"]}, features_NxD)

  def head_loss(self, head, batch):
    features_NxD, labels = batch
    return cross_entropy(self.head_logits(head, features_NxD), labels)

  def head_accuracy(self, head, batch):
    features_NxD, labels = batch
    return accuracy(self.head_logits(head, features_NxD), labels)

  def head_split(self, metric: str = "loss") -> HeadSplit:
    """HeadSplit whose `metric` is the loss or ("accuracy") the accuracy."""
    return HeadSplit(self.embed, self.head_loss,
                     self.head_accuracy if metric == "accuracy" else None)


def cross_entropy(logits_NxW, labels_N):
  return optax.softmax_cross_entropy_with_integer_labels(logits_NxW, labels_N).mean()


def accuracy(logits_NxW, labels_N):
  """Fraction of correct argmax predictions; NaN where any logit is not finite
  (a diverged episode: argmax would pick a class and score it as a guess)."""
  correct = jnp.mean(jnp.argmax(logits_NxW, -1) == labels_N)
  return jnp.where(jnp.all(jnp.isfinite(logits_NxW)), correct, jnp.nan)
