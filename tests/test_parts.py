"""Small parts against closed forms: outer-rate schedules, the sinusoid
sampler and the 95% interval."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax import config as config_lib
from metajax.evaluate import mean_ci95
from metajax.step import make_outer_optimizer
from metajax.tasks.sinusoid import sample_tasks


def _rates(schedule, steps=10, lr=0.5, lr_min=0.1):
  """The rate of each of `steps` SGD updates, read off as -update with gradient 1."""
  c = config_lib.sinusoid_base()
  c.update(outer_optimizer="sgd", outer_lr=lr, outer_lr_min=lr_min,
           outer_lr_schedule=schedule, num_steps=steps)
  opt = make_outer_optimizer(c)
  params, out = jnp.zeros(()), []
  state = opt.init(params)
  for _ in range(steps):
    update, state = opt.update(jnp.ones(()), state, params)
    out.append(-float(update))
  return np.array(out)


@pytest.mark.parametrize("schedule,formula", [
    ("constant", lambda t, T, a, b: a),
    ("linear", lambda t, T, a, b: a + (b - a) * t / T),
    ("cosine", lambda t, T, a, b: b + (a - b) * (1 + math.cos(math.pi * t / T)) / 2)])
def test_outer_rate_schedules_follow_their_formulas(schedule, formula):
  got = _rates(schedule)
  want = [formula(t, 10, 0.5, 0.1) for t in range(10)]
  np.testing.assert_allclose(got, want, rtol=1e-6)


class SinusoidSamplerTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_points_lie_on_each_tasks_sine_inside_the_ranges(self):
    sample = self.variant(lambda k: sample_tasks(k, meta_batch=200, k_shot=5, k_query=7))
    t = jax.tree.map(np.asarray, sample(jax.random.PRNGKey(3)))
    amp, phase = t["amplitude"], t["phase"]
    assert amp.shape == phase.shape == (200,)
    assert (0.1 <= amp).all() and (amp <= 5.0).all() and (0 <= phase).all()
    assert (phase <= np.pi).all()
    # Spread over the ranges, not stuck at one value (U[0.1, 5] has sd 1.41).
    assert amp.std() > 1.0 and phase.std() > 0.6
    for part, n in (("support", 5), ("query", 7)):
      x, y = t[part]
      assert x.shape == y.shape == (200, n, 1)
      assert (-5 <= x).all() and (x <= 5).all()
      np.testing.assert_allclose(y, amp[:, None, None] * np.sin(x - phase[:, None, None]),
                                 atol=1e-5)


def test_mean_ci95_against_hand_computed_values():
  # 1, 2, 3, 4: mean 2.5, sample sd sqrt(5/3), half-width 1.96 * sd / 2.
  mean, half = mean_ci95([1, 2, 3, 4])
  assert mean == 2.5
  assert half == pytest.approx(1.96 * math.sqrt(5 / 3) / 2, rel=1e-12)
  # A Bernoulli accuracy: 60 of 100 correct -> sd sqrt(0.24 * 100 / 99).
  mean, half = mean_ci95([1.0] * 60 + [0.0] * 40)
  assert mean == pytest.approx(0.6)
  assert half == pytest.approx(1.96 * math.sqrt(0.24 * 100 / 99) / 10, rel=1e-12)



class NoiseImagesTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_uniform_over_the_256_levels(self):
    from metajax.tasks.fewshot import noise_images
    shape = (3, 7, 11, 13)                       # not a multiple of the 4 pixels per word
    x = np.asarray(self.variant(noise_images, static_argnums=1)(jax.random.PRNGKey(0), shape))
    assert x.shape == shape and x.dtype == np.float32
    levels = np.rint(x * 255)
    np.testing.assert_allclose(x, levels / 255, rtol=1e-6)
    counts = np.bincount(levels.astype(int).ravel(), minlength=256)
    assert counts.size == 256
    # Pearson's chi-square against uniform, 255 degrees of freedom: mean 255,
    # sd ~22.6; 400 is beyond 6 sd.
    expected = x.size / 256
    assert np.sum((counts - expected) ** 2 / expected) < 400
    # different keys give different images, one key the same
    y = np.asarray(noise_images(jax.random.PRNGKey(1), shape))
    assert np.mean(x == y) < 0.05
    np.testing.assert_array_equal(x, np.asarray(noise_images(jax.random.PRNGKey(0), shape)))
