"""N-way K-shot episodes drawn on device from a split held as uint8.

A split is one array `images_CxMxHxWxc` (C classes, M images per class,
uint8; see `metajax.datasets.load_split`). An episode takes N distinct classes,
K + Q distinct images of each, and gives class i of the episode the label
perm[i] for a fresh random permutation, so a model cannot learn a fixed
class-to-label map. Everything is `jax.random` inside the jitted meta-step:
no Python data loader runs during training.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


class EpisodeError(ValueError):
  """An episode shape that the split cannot supply."""


def check_episode_shape(images_shape, *, ways: int, shots: int, queries: int,
                        split: str = "split"):
  """Raises EpisodeError unless N <= C classes and K + Q <= M images per class."""
  num_classes, per_class = images_shape[:2]
  if ways > num_classes:
    raise EpisodeError(f"{ways}-way episodes need {ways} classes but the {split} has "
                       f"only {num_classes}")
  if shots + queries > per_class:
    raise EpisodeError(f"{shots}-shot episodes with {queries} query images per class "
                       f"need {shots + queries} images per class but the {split} has "
                       f"{per_class}")


def to_float(x_uint8, mean=None, std=None):
  """uint8 pixels -> float32 in [0, 1], then (x - mean) / std per channel if given."""
  x = x_uint8.astype(jnp.float32) / 255.0
  if mean is not None:
    x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  return x


def sample_episode(key, images_CxMxHxWxc, *, ways: int, shots: int, queries: int,
                   shuffle_support: bool = False):
  """One episode: ((x_NKxHxWxc uint8, y_NK), (x_NQxHxWxc uint8, y_NQ)).

  Support and query rows are grouped by class (class i's K images, then
  class i+1's); labels are the permuted class ids. `shuffle_support` puts the
  support rows in random order (for inner minibatches, as Reptile's).
  """
  num_classes, per_class = images_CxMxHxWxc.shape[:2]
  k_cls, k_img, k_lab = jax.random.split(key, 3)
  classes_N = jax.random.choice(k_cls, num_classes, (ways,), replace=False)
  pick = lambda k: jax.random.choice(k, per_class, (shots + queries,), replace=False)
  images_NxP = jax.vmap(pick)(jax.random.split(k_img, ways))
  x_NxPxHxWxc = images_CxMxHxWxc[classes_N[:, None], images_NxP]
  labels_N = jax.random.permutation(k_lab, ways)
  y_NxP = jnp.broadcast_to(labels_N[:, None], (ways, shots + queries))
  flat = lambda a: a.reshape((-1,) + a.shape[2:])
  support = (flat(x_NxPxHxWxc[:, :shots]), flat(y_NxP[:, :shots]))
  query = (flat(x_NxPxHxWxc[:, shots:]), flat(y_NxP[:, shots:]))
  if shuffle_support:
    # A key apart from the three above (fold_in(key, i) for a small i would
    # equal one of them), so the episode itself is the same as unshuffled.
    order = jax.random.permutation(jax.random.fold_in(key, 2**31 - 1), ways * shots)
    support = (support[0][order], support[1][order])
  return support, query


def sample_episodes(key, images_CxMxHxWxc, *, meta_batch: int, ways: int,
                    shots: int, queries: int, mean=None, std=None,
                    shuffle_support: bool = False) -> dict:
  """A meta-batch of B episodes as float32 model inputs, from one key.

  Returns {"support": (x_BxNKxHxWxc, y_BxNK), "query": (x_BxNQxHxWxc, y_BxNQ)},
  the task format of `metajax.algorithms.meta_gradient`.
  """
  return episodes_from_keys(jax.random.split(key, meta_batch), images_CxMxHxWxc,
                            ways=ways, shots=shots, queries=queries, mean=mean, std=std,
                            shuffle_support=shuffle_support)


def episodes_from_keys(keys_B, images_CxMxHxWxc, *, ways: int, shots: int, queries: int,
                       mean=None, std=None, shuffle_support: bool = False) -> dict:
  """sample_episodes with one key per episode (keys_B: B keys), so an episode
  does not depend on how many are drawn with it (evaluation: episode i of the
  test is the same whatever eval_batch)."""
  check_episode_shape(images_CxMxHxWxc.shape, ways=ways, shots=shots, queries=queries)
  one = lambda k: sample_episode(k, images_CxMxHxWxc, ways=ways, shots=shots,
                                 queries=queries, shuffle_support=shuffle_support)
  (xs, ys), (xq, yq) = jax.vmap(one)(keys_B)
  return {"support": (to_float(xs, mean, std), ys),
          "query": (to_float(xq, mean, std), yq)}


def channel_stats(images_CxMxHxWxc) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std of a uint8 split, in [0, 1] units (float64 sums)."""
  x = np.asarray(images_CxMxHxWxc)
  c = x.shape[-1]
  flat = x.reshape(-1, c)
  mean = np.zeros(c)
  sq = np.zeros(c)
  step = 1 << 22  # rows per pass: bounded float64 memory for mini-ImageNet
  for i in range(0, flat.shape[0], step):
    part = flat[i:i + step].astype(np.float64) / 255.0
    mean += part.sum(0)
    sq += np.square(part).sum(0)
  n = flat.shape[0]
  mean /= n
  std = np.sqrt(np.maximum(sq / n - mean ** 2, 1e-12))
  return mean.astype(np.float32), std.astype(np.float32)
