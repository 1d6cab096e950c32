"""Conv-4 pieces against independent references, and the batching strategies on it."""

import chex
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from metajax.algorithms import Algorithm, meta_gradient
from metajax import winograd
from metajax import models
from metajax.models import (CONV_IMPLS, WINOGRAD_MIN_CHANNELS, WINOGRAD_MIN_POSITIONS, ConvBlock,
                            Conv4, _moments, _patch_moments, batch_norm, bn_relu_pool, conv3x3,
                            max_pool2x2)
from metajax.tasks.fewshot import Problem, synthetic_tasks


def _np_conv_same(x, k):
  """Direct loops: out[n,h,w,o] = sum_{i,j,c} xpad[n,h+i,w+j,c] k[i,j,c,o]."""
  n, h, w, _ = x.shape
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = np.zeros((n, h, w, k.shape[-1]))
  for i in range(3):
    for j in range(3):
      out += np.einsum("nhwc,co->nhwo", xp[:, i:i + h, j:j + w, :], k[i, j])
  return out


@pytest.mark.parametrize("impl", CONV_IMPLS)
def test_conv_matches_direct_loops(impl):
  # 3 channels: "winograd" is im2col here; Winograd's own form: test_winograd_*.
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 6, 3), jnp.float64)
    k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 4), jnp.float64)
    np.testing.assert_allclose(conv3x3(x, k, impl), _np_conv_same(np.asarray(x), np.asarray(k)),
                               rtol=1e-12, atol=1e-12)


def _np_conv_same_stride2(x, k):
  """TensorFlow's 'SAME' with stride 2 from its definition: ceil(n/2) outputs,
  padding max((out - 1) * 2 + 3 - n, 0) split with the smaller half before."""
  n, h, w, _ = x.shape
  oh, ow = -(-h // 2), -(-w // 2)
  ph, pw = max((oh - 1) * 2 + 3 - h, 0), max((ow - 1) * 2 + 3 - w, 0)
  xp = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2 + 2), (pw // 2, pw - pw // 2 + 2), (0, 0)))
  out = np.zeros((n, oh, ow, k.shape[-1]))
  for a in range(oh):
    for b in range(ow):
      out[:, a, b] = np.einsum("nijc,ijco->no", xp[:, 2 * a:2 * a + 3, 2 * b:2 * b + 3], k)
  return out


@pytest.mark.parametrize("impl", CONV_IMPLS)
def test_stride2_conv_matches_tensorflow_same_padding(impl):
  with jax.enable_x64(True):
    for hw in ((7, 6), (4, 5)):  # odd and even sizes pad differently
      x = jax.random.normal(jax.random.PRNGKey(0), (2,) + hw + (3,), jnp.float64)
      k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 4), jnp.float64)
      np.testing.assert_allclose(conv3x3(x, k, impl, stride=2),
                                 _np_conv_same_stride2(np.asarray(x), np.asarray(k)),
                                 rtol=1e-12, atol=1e-12)


def _float64_maml_gradient(impls, shape, *, meta_batch, shots, queries, **problem):
  """(grad, params): grad(impl, **batching) is the second-order MAML
  meta-gradient (2 inner steps) of a 3-way conv-4 with that conv form, in
  float64, at the same float64 params and synthetic tasks for every form.
  Call it inside jax.enable_x64."""
  probs = {i: Problem(ways=3, image_shape=shape, conv_impl=i, **problem) for i in impls}
  params = jax.tree.map(lambda a: a.astype(jnp.float64),
                        probs["xla"].init_params(jax.random.PRNGKey(3)))
  tasks = synthetic_tasks(jax.random.PRNGKey(4), meta_batch=meta_batch, ways=3, shots=shots,
                          queries=queries, image_shape=shape)
  tasks = jax.tree.map(lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a, tasks)
  mp = {"params": params, "inner_lr": None}
  grad = lambda impl, **batching: jax.jit(lambda m, t: meta_gradient(
      Algorithm(name="maml", steps=2, inner_lr=0.3, **batching), probs[impl].loss_fn,
      m, t))(mp, tasks)
  return grad, params


def test_strided_conv4_features_and_second_order_gradient_for_every_conv_form():
  # MAML's Omniglot model (here 20 -> 10 -> 5 -> 3 -> 2, even and odd sizes),
  # features averaged over the last block's 2 x 2 positions; the second-order
  # meta-gradient of every conv form against XLA's own strided convolution.
  with jax.enable_x64(True):
    shape = (20, 20, 1)
    grad, params = _float64_maml_gradient(CONV_IMPLS, shape, meta_batch=2, shots=1, queries=2,
                                          filters=3, downsample="stride")
    assert params["head"]["kernel"].shape == (3, 3)  # filters features, not 2*2*filters
    # The features: the blocks applied one by one, then the mean of the 2 x 2 map.
    x = jax.random.uniform(jax.random.PRNGKey(5), (4,) + shape, jnp.float64)
    h = x
    for i in range(4):
      h = ConvBlock(3, downsample="stride").apply({"params": params[f"block_{i}"]}, h)
    assert h.shape == (4, 2, 2, 3)
    embed = Problem(ways=3, filters=3, image_shape=shape, downsample="stride", head=False)
    np.testing.assert_allclose(embed.embed({k: v for k, v in params.items() if k != "head"}, x),
                               h.mean(axis=(1, 2)), rtol=1e-12)
    ref = grad("xla")
    for impl in CONV_IMPLS[1:]:
      chex.assert_trees_all_close(grad(impl), ref, rtol=1e-9, atol=1e-12,
                                  custom_message=impl)


def test_max_pool_and_batch_norm_match_references():
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (2, 7, 6, 3)))
  expected = x[:, :6].reshape(2, 3, 2, 3, 2, 3).max(axis=(2, 4))
  np.testing.assert_allclose(max_pool2x2(jnp.asarray(x)), expected, rtol=1e-6)
  scale, bias = np.array([1.0, 2.0, 0.5]), np.array([0.0, -1.0, 3.0])
  mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
  np.testing.assert_allclose(batch_norm(jnp.asarray(x), scale, bias),
                             (x - mean) / np.sqrt(var + 1e-5) * scale + bias,
                             rtol=1e-5, atol=1e-5)


def test_second_order_meta_gradient_same_for_every_conv_form_and_batching():
  # One reference (XLA conv, tasks vmapped), compiled once, against each other
  # conv form under another way of batching the tasks (metajax.batching), so
  # every form and every strategy is checked once; float64, 2 inner steps.
  with jax.enable_x64(True):
    grad, _ = _float64_maml_gradient(CONV_IMPLS, (16, 16, 2), meta_batch=4, shots=2, queries=3,
                                     filters=4)
    ref = grad("xla")
    # "winograd" here is im2col (4 channels); test_winograd_meta_gradient_* has it.
    assert CONV_IMPLS == ("xla", "im2col", "shifted", "hybrid", "winograd")
    # Each remat mode too (what the backward pass keeps of an inner step).
    for impl, batching, chunk, remat in (("im2col", "vmap", 1, "dots"),
                                         ("shifted", "unroll", 2, "off"),
                                         ("hybrid", "scan", 1, "full")):
      got = grad(impl, batching=batching, task_chunk=chunk, remat=remat)
      chex.assert_trees_all_close(got, ref, rtol=1e-9, atol=1e-12,
                                  custom_message=f"{impl}/{batching}/{chunk}/{remat}")


def test_winograd_conv_matches_direct_loops_for_even_and_odd_sizes():
  # Winograd's form itself, for any channel count (conv3x3 uses it from 16).
  with jax.enable_x64(True):
    for hw in ((1, 1), (2, 3), (5, 6), (7, 7), (8, 4)):
      x = jax.random.normal(jax.random.PRNGKey(0), (2,) + hw + (3,), jnp.float64)
      k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 4), jnp.float64)
      np.testing.assert_allclose(winograd.conv3x3(x, k),
                                 _np_conv_same(np.asarray(x), np.asarray(k)),
                                 rtol=1e-12, atol=1e-12, err_msg=str(hw))


def test_winograd_kernel_transform_is_g_k_g_transposed():
  # Written out as adds and halvings; against the matrices of Lavin & Gray
  # (G, 4x3) in numpy: G k Gᵀ per (input, output) channel pair, W offset first.
  with jax.enable_x64(True):
    k = jax.random.normal(jax.random.PRNGKey(2), (3, 3, 5, 7), jnp.float64)
    g = np.array(winograd.G_4x3)
    want = np.einsum("ai,bj,ijco->baco", g, g, np.asarray(k))
    np.testing.assert_allclose(winograd._g(winograd._g(k, 0), 1), want, rtol=1e-14, atol=1e-15)


def test_winograd_and_few_channel_im2col_derivatives_match_xla_conv_to_second_order():
  # MAML differentiates the inner gradient again (reverse over reverse); iMAML
  # takes Hessian-vector products forward over reverse. Both against XLA's conv,
  # for Winograd's form and for im2col with 3 channels (its patches are built
  # in two stages below 16 channels, models._patches).
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 6, 3), jnp.float64)
    k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 4), jnp.float64)
    forms = {"xla": lambda x, k: conv3x3(x, k, "xla"), "winograd": winograd.conv3x3,
             "im2col": lambda x, k: conv3x3(x, k, "im2col")}
    loss = lambda f: lambda x, k: jnp.sum(jnp.tanh(f(x, k)))
    adapted = lambda f: lambda x, k: loss(f)(x, k - 0.1 * jax.grad(loss(f), 1)(x, k))
    second = {n: jax.grad(adapted(f), (0, 1))(x, k) for n, f in forms.items()}
    hvp = {n: jax.jvp(jax.grad(loss(f), 1), (x, k), (x, jnp.ones_like(k)))[1]
           for n, f in forms.items()}
    for form in ("winograd", "im2col"):
      chex.assert_trees_all_close(second[form], second["xla"], rtol=1e-10, atol=1e-12)
      chex.assert_trees_all_close(hvp[form], hvp["xla"], rtol=1e-10, atol=1e-12)


def test_winograd_float32_error_is_no_larger_than_im2col():
  # Against a float64 truth (XLA's conv in float64), on the Omniglot 14x14 layer.
  # (Measured: 3.6e-7 against im2col's 7.8e-7; the bounds leave room for
  # other CPUs' summation orders.)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 14, 14, 64))
  k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 64, 64)) / 24.0
  with jax.enable_x64(True):
    truth = np.asarray(conv3x3(jnp.asarray(x, jnp.float64), jnp.asarray(k, jnp.float64)))
  err = lambda y: np.abs(np.asarray(y, np.float64) - truth).max() / np.abs(truth).max()
  assert err(winograd.conv3x3(x, k)) < 5e-6
  assert err(winograd.conv3x3(x, k)) <= 3 * err(conv3x3(x, k, "im2col"))


def _count_winograd_calls(monkeypatch):
  calls = []
  real = winograd.conv3x3
  monkeypatch.setattr(winograd, "conv3x3", lambda *a: calls.append(1) or real(*a))
  return calls


def test_winograd_impl_is_winograd_only_for_stride_1_float32_and_enough_channels(monkeypatch):
  calls = _count_winograd_calls(monkeypatch)
  c, n = WINOGRAD_MIN_CHANNELS, -(-WINOGRAD_MIN_POSITIONS // 64)  # 8x8 images
  x = jax.random.normal(jax.random.PRNGKey(0), (n, 8, 8, c))
  k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, c, 4))
  used = lambda *a, stride=1: (calls.clear(), conv3x3(*a, "winograd", stride), len(calls))[2]
  assert used(x, k) == 1
  assert used(x, k, stride=2) == 0                                  # stride 2: im2col
  assert used(x[..., :c - 1], k[:, :, :c - 1]) == 0                 # too few channels
  assert used(x[:n - 1], k) == 0                                    # too few positions
  assert used(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16)) == 0  # 16-bit: im2col
  np.testing.assert_array_equal(conv3x3(x[:2, ..., :3], k[:, :, :3], "winograd"),
                                conv3x3(x[:2, ..., :3], k[:, :, :3], "im2col"))


def test_winograd_meta_gradient_second_order_matches_xla_conv(monkeypatch):
  # 16 filters and no minimum size, so blocks 1-3 (8x8, 4x4, 2x2) take
  # Winograd's form; tasks vmapped (its batched product gains the task axis)
  # and scanned.
  calls = _count_winograd_calls(monkeypatch)
  monkeypatch.setattr(models, "WINOGRAD_MIN_POSITIONS", 0)
  with jax.enable_x64(True):
    grad, _ = _float64_maml_gradient(("xla", "winograd"), (16, 16, 1), meta_batch=2, shots=1,
                                     queries=2, filters=WINOGRAD_MIN_CHANNELS)
    ref = grad("xla")
    for batching in ("vmap", "scan"):
      calls.clear()
      chex.assert_trees_all_close(grad("winograd", batching=batching), ref, rtol=1e-9,
                                  atol=1e-12, custom_message=batching)
      assert calls, batching


def _kernel_shaped_convs(fn, *args):
  """XLA convolutions in fn's program whose output has a 3x3 kernel's shape:
  kernel gradients, the form XLA's CPU backend runs slowly."""
  found = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "conv_general_dilated":
        if eqn.outvars[0].aval.shape[:2] == (3, 3):
          found.append(eqn.outvars[0].aval.shape)
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        walk(sub)

  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return found


def test_hybrid_conv_takes_no_xla_kernel_gradient_at_any_order():
  # "hybrid" is XLA's convolution forward and input gradient, im2col kernel
  # gradient: second-order MAML differentiates its forward and backward rules
  # again, and each must stay on the custom rule (not XLA's own derivative).
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 6, 3))
  k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 4))
  conv = lambda impl: lambda x, k: jnp.sum(jnp.tanh(conv3x3(x, k, impl)))
  inner = lambda impl: lambda x, k: conv(impl)(x, k - 0.1 * jax.grad(conv(impl), 1)(x, k))
  second = lambda impl: jax.grad(inner(impl), (0, 1))
  assert _kernel_shaped_convs(second("xla"), x, k)  # the check sees them where they are
  assert _kernel_shaped_convs(second("hybrid"), x, k) == []
  chex.assert_trees_all_close(second("hybrid")(x, k), second("xla")(x, k), rtol=1e-4, atol=1e-5)


@pytest.mark.xla_optimized  # as in real runs, where XLA's passes are on
def test_init_params_equals_flax_init_run_op_by_op():
  # init_params is jitted (op by op leaves compiled kernels resident); the
  # values must be those of flax's init called eagerly, as before, bit for bit.
  from metajax.config import sinusoid_base
  from metajax.tasks import sinusoid
  key = jax.random.PRNGKey(7)
  conv = Problem(ways=5, filters=8, image_shape=(28, 28, 1))
  sine = sinusoid.Problem(sinusoid_base())
  for problem, x in ((conv, jnp.zeros((2, 28, 28, 1))), (sine, jnp.zeros((1, 1)))):
    want = problem.model.init(key, x)["params"]
    got = problem.init_params(key)
    chex.assert_trees_all_equal(got, want)


def test_conv4_shapes_and_per_step_bn():
  for shape, filters in (((28, 28, 1), 64), ((84, 84, 3), 32)):
    model = Conv4(ways=5, filters=filters)  # shapes only: eval_shape computes nothing
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((2,) + shape))["params"]
    out = jax.eval_shape(lambda p, x: model.apply({"params": p}, x), params,
                         jnp.zeros((3,) + shape))
    assert out.shape == (3, 5)
    assert params["block_0"]["kernel"].shape == (3, 3, shape[-1], filters)
    assert params["head"]["kernel"].shape[0] == filters * (shape[0] // 16) ** 2
  model = Conv4(ways=5, filters=8, bn="per_step", bn_steps=3)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((2, 16, 16, 1)))["params"]
  assert params["block_0"]["bn_scale"].shape == (3, 8)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 16, 16, 1))
  params["block_0"]["bn_bias"] = params["block_0"]["bn_bias"].at[1].set(1.0)
  apply = jax.jit(lambda p, x, step: model.apply({"params": p}, x, step))  # step traced
  out = [apply(params, x, step) for step in (0, 1, 2)]
  assert not np.allclose(out[0], out[1]) and np.allclose(out[0], out[2])
  # Steps past the last set use the last set; a Python int step (no jit) the same set.
  np.testing.assert_allclose(apply(params, x, 7), out[2], rtol=1e-6)
  np.testing.assert_allclose(model.apply({"params": params}, x, 1), out[1], rtol=1e-5, atol=1e-6)
  none = Conv4(ways=5, filters=8, bn="none")
  assert "bn_scale" not in jax.eval_shape(none.init, jax.random.PRNGKey(0), x)["params"]["block_0"]


def _bn_ref(x, scale, bias):
  """Batch norm with the batch's statistics, written out."""
  mean = x.mean(axis=(0, 1, 2))
  var = ((x - mean) ** 2).mean(axis=(0, 1, 2))
  return (x - mean) / jnp.sqrt(var + 1e-5) * scale + bias


def _pool_ref(x):
  """2x2 'VALID' max-pool by reduce_window, differentiated by JAX itself."""
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def test_hand_written_backward_passes_match_autodiff_to_second_order():
  """max_pool2x2 carries a custom VJP; check it (and its own derivative), composed
  with batch norm, against reduce_window differentiated by JAX, in float64."""
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.PRNGKey(7), (3, 5, 4, 2), jnp.float64)
    scale = jnp.array([0.7, 1.3], jnp.float64)
    bias = jnp.array([0.1, -0.2], jnp.float64)
    for ours, ref in ((lambda x, s: max_pool2x2(batch_norm(x, s, bias)),
                       lambda x, s: _pool_ref(_bn_ref(x, s, bias))),):
      f = lambda fn: lambda x, s: jnp.sum(jnp.sin(fn(x, s)) * jnp.arange(1, 9).reshape(1, 2, 2, 2))
      g_ours = jax.grad(f(ours), argnums=(0, 1))(x, scale)
      g_ref = jax.grad(f(ref), argnums=(0, 1))(x, scale)
      chex.assert_trees_all_close(g_ours, g_ref, rtol=1e-10, atol=1e-12)
      # Second order: the gradient's own derivative w.r.t. the BN scale.
      h = lambda fn: jax.grad(lambda s: jnp.sum(jax.grad(f(fn))(x, s) ** 2))(scale)
      np.testing.assert_allclose(h(ours), h(ref), rtol=1e-9)


class BnReluPoolTest(chex.TestCase):
  """bn_relu_pool takes the 2x2 max before batch norm and ReLU, and adds a
  conv's bias after the pool; the paper's order (bias, BN, ReLU, then pool)
  written with reduce_window is the reference."""

  @staticmethod
  def _reference(x, scale, shift, bias):
    x = x + bias
    return _pool_ref(jnp.maximum(x if scale is None else _bn_ref(x, scale, shift), 0))

  @chex.variants(with_jit=True, without_jit=True)
  def test_values_and_derivatives_to_second_order_match_the_papers_order(self):
    with jax.enable_x64(True):
      # Odd H and W (the last row and column are dropped, but count in the BN
      # statistics); scales of both signs, so some channels pool their minimum.
      x = jax.random.normal(jax.random.PRNGKey(11), (3, 7, 5, 4), jnp.float64)
      scale = jnp.array([0.8, -1.3, 2.0, -0.4], jnp.float64)
      shift = jnp.array([0.1, 0.3, -0.2, 0.0], jnp.float64)
      bias = jnp.array([0.5, -0.7, 0.2, 1.1], jnp.float64)
      weights = jnp.cos(jnp.arange(3 * 3 * 2 * 4.0)).reshape(3, 3, 2, 4)
      ours_fn = lambda x, s, t, b: bn_relu_pool(x, s, t, bias_C=b)
      for bn in (True, False):
        def loss(fn, x, scale, shift, bias):
          out = fn(x, scale, shift, bias) if bn else fn(x, None, None, bias)
          return jnp.sum(jnp.sin(out) * weights)
        grad = jax.grad(loss, argnums=(1, 2, 3, 4))
        ours = self.variant(lambda *a: grad(ours_fn, *a))
        bn_args = (scale, shift) if bn else (None, None)
        chex.assert_trees_all_close(ours_fn(x, *bn_args, bias), self._reference(x, *bn_args, bias),
                                    rtol=1e-12, atol=1e-14)
        g_ours, g_ref = ours(x, scale, shift, bias), grad(self._reference, x, scale, shift, bias)
        chex.assert_trees_all_close(g_ours, g_ref, rtol=1e-10, atol=1e-12)
        # Under BN the bias cancels: its gradient is zero (up to rounding);
        # without BN it is not.
        assert (np.max(np.abs(g_ref[3])) < 1e-12) == bn
        assert (np.max(np.abs(g_ours[3])) < 1e-12) == bn
        # Second order, as MAML differentiates the inner gradient (of x's
        # kernel-side input and of the bias) again.
        def second(fn):
          def inner_norm(x, s, b):
            g_x, g_b = jax.grad(loss, argnums=(1, 4))(fn, x, s, shift, b)
            return jnp.sum(g_x ** 2) + jnp.sum(g_b ** 2)
          return jax.grad(inner_norm, argnums=(0, 1, 2))(x, scale, bias)
        second_ref = second(self._reference)
        chex.assert_trees_all_close(self.variant(lambda: second(ours_fn))(), second_ref,
                                    rtol=1e-9, atol=1e-12)
        # Not vacuous: a pool keeps 1 of 4 elements and ReLU about half of those.
        assert np.count_nonzero(second_ref[0]) > x.size // 16

  def test_shifted_variance_is_the_variance_to_second_order(self):
    # _moments' variance against numpy's two-pass variance, and its first and
    # second derivatives against the closed forms 2(x - m)/n and
    # (2/n)(I - 11^T/n) (one channel, float64); an offset of 1e3 checks that
    # the value keeps the two-pass formula's accuracy in float32.
    with jax.enable_x64(True):
      x = jax.random.normal(jax.random.PRNGKey(3), (2, 3, 2, 1), jnp.float64)
      n = x.size
      mean, var = _moments(x)
      np.testing.assert_allclose(mean, [np.mean(x)], rtol=1e-14)
      np.testing.assert_allclose(var, [np.var(x)], rtol=1e-14)
      v = lambda x: _moments(x)[1][0]
      np.testing.assert_allclose(jax.grad(v)(x), 2 * (x - np.mean(x)) / n, rtol=1e-12, atol=1e-15)
      hess = jax.hessian(v)(x).reshape(n, n)
      np.testing.assert_allclose(hess, 2 / n * (np.eye(n) - np.ones((n, n)) / n), atol=1e-14)
    x32 = np.float32(1e3) + np.asarray(jax.random.normal(jax.random.PRNGKey(4), (64, 5, 5, 2)),
                                       np.float32)
    np.testing.assert_allclose(_moments(jnp.asarray(x32))[1],
                               np.var(x32.astype(np.float64), axis=(0, 1, 2)), rtol=1e-4)


@pytest.mark.parametrize("conv_impl,shape", [
    ("im2col", (3, 7, 6, 1)),     # statistics from the patches (1 channel)
    ("im2col", (3, 7, 6, 3)),     # statistics from the output
    ("winograd", (56, 6, 6, WINOGRAD_MIN_CHANNELS)),   # enough positions for its form
    ("xla", (3, 7, 6, 2))])
def test_conv_block_matches_the_papers_order_to_second_order(conv_impl, shape):
  """A ConvBlock under batch norm (its pool taken first, the sign of each BN
  scale folded into the kernel's output channels) against the papers' order
  written with XLA's convolution, batch norm, ReLU and reduce_window's pool,
  differentiated by JAX: values, gradients w.r.t. the input and every
  parameter, and the derivative of the gradient's norm (MAML's second order),
  with BN scales of both signs, in float64."""
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.PRNGKey(20), shape, jnp.float64)
    block = ConvBlock(4, conv_impl=conv_impl)
    keys = iter(jax.random.split(jax.random.PRNGKey(21), 8))
    params = jax.tree.map(lambda v: jax.random.normal(next(keys), v.shape, jnp.float64),
                          block.init(jax.random.PRNGKey(0), x[:1])["params"])
    params["bn_scale"] = jnp.array([[0.8, -1.3, 2.0, -0.4]])
    ours = lambda x, p: block.apply({"params": p}, x)

    def ref(x, p):
      h = jax.lax.conv_general_dilated(x, p["kernel"], (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["bias"]
      return _pool_ref(jnp.maximum(_bn_ref(h, p["bn_scale"][0], p["bn_bias"][0]), 0))

    weights = jnp.cos(jnp.arange(np.prod(ref(x, params).shape[1:]), dtype=jnp.float64))
    loss = lambda fn, x, p: jnp.sum(jnp.sin(fn(x, p)) * weights.reshape(ref(x, p).shape[1:]))
    chex.assert_trees_all_close(ours(x, params), ref(x, params), rtol=1e-10, atol=1e-12)
    grad = lambda fn: jax.grad(loss, argnums=(1, 2))(fn, x, params)
    chex.assert_trees_all_close(grad(ours), grad(ref), rtol=1e-9, atol=1e-11)

    def second(fn):
      def inner_norm(x, p):
        g = jax.grad(loss, argnums=2)(fn, x, p)
        return sum(jnp.sum(v ** 2) for v in jax.tree.leaves(g))
      return jax.grad(inner_norm, argnums=(0, 1))(x, params)
    second_ref = second(ref)
    chex.assert_trees_all_close(jax.jit(lambda: second(ours))(), second_ref, rtol=1e-8,
                                atol=1e-10)
    assert np.count_nonzero(second_ref[1]["kernel"]) == second_ref[1]["kernel"].size


class PatchMomentsTest(chex.TestCase):
  """_patch_moments: the batch statistics of y = patches @ kernel from the
  patches, against numpy's mean and variance of y and against _moments of y
  (itself checked against closed forms above) to second order."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_values_and_derivatives_to_second_order(self):
    with jax.enable_x64(True):
      p = jax.random.normal(jax.random.PRNGKey(5), (40, 9), jnp.float64) + 0.5
      k = jax.random.normal(jax.random.PRNGKey(6), (9, 4), jnp.float64)
      mean, var = self.variant(_patch_moments)(p, k)
      y = np.asarray(p) @ np.asarray(k)
      np.testing.assert_allclose(mean, y.mean(0), rtol=1e-12)
      np.testing.assert_allclose(var, y.var(0), rtol=1e-12)
      # A scalar of both statistics, as batch norm uses them.
      w = jnp.arange(1.0, 5.0)
      ours = lambda p, k: jnp.sum(w * jnp.sin(_patch_moments(p, k)[0]) / jnp.sqrt(
          _patch_moments(p, k)[1] + 0.1))
      ref = lambda p, k: jnp.sum(w * jnp.sin(_moments((p @ k)[None, None])[0]) / jnp.sqrt(
          _moments((p @ k)[None, None])[1] + 0.1))
      for order in (jax.grad, jax.hessian):
        d = order(ours, argnums=(0, 1))
        chex.assert_trees_all_close(self.variant(d)(p, k), order(ref, argnums=(0, 1))(p, k),
                                    rtol=1e-9, atol=1e-12)
      # Forward over reverse (iMAML's Hessian-vector products).
      t = jax.random.normal(jax.random.PRNGKey(7), (9, 4), jnp.float64)
      hvp = lambda f: lambda p, k, t: jax.jvp(lambda k: jax.grad(f, argnums=1)(p, k), (k,), (t,))[1]
      np.testing.assert_allclose(self.variant(hvp(ours))(p, k, t), hvp(ref)(p, k, t), rtol=1e-9,
                                 atol=1e-12)

  def test_float32_variance_against_float64(self):
    # Patches around 100: the centred covariance keeps float32's accuracy
    # where E[y^2] - E[y]^2 would lose it.
    p64 = 100.0 + np.asarray(jax.random.normal(jax.random.PRNGKey(8), (4096, 9)), np.float64)
    k64 = np.asarray(jax.random.normal(jax.random.PRNGKey(9), (9, 16)), np.float64)
    _, var = _patch_moments(jnp.asarray(p64, jnp.float32), jnp.asarray(k64, jnp.float32))
    np.testing.assert_allclose(var, (p64 @ k64).var(0), rtol=1e-4)
    # The hard case for k^T S k: smooth, strongly correlated patches (blurred
    # strokes on a white page, zero-padded) and kernels summing to ~0
    # (Laplacian, Sobel), where the quadratic form cancels.
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:28, 0:28] / 28
    lines = rng.uniform(-1, 1, (40, 3, 1, 1))
    img = 1 - 0.9 * np.exp(-(lines[:, 0] * xx + lines[:, 1] * yy + lines[:, 2]) ** 2 / 0.5)
    p64 = np.pad(img, ((0, 0), (1, 1), (1, 1)))
    p64 = np.stack([p64[:, i:i + 28, j:j + 28] for i in range(3) for j in range(3)], -1)
    p64 = p64.reshape(-1, 9)
    lap = np.array([0, 1, 0, 1, -4, 1, 0, 1, 0.0])
    k64 = np.stack([lap, [1, 0, -1, 2, 0, -2, 1, 0, -1.0], lap + 1e-3 * rng.normal(size=9)], 1)
    _, var = _patch_moments(jnp.asarray(p64, jnp.float32), jnp.asarray(k64, jnp.float32))
    np.testing.assert_allclose(var, (p64 @ k64).var(0), rtol=1e-4)

  def test_conv_block_takes_them_only_for_a_narrow_im2col_layer_under_bn(self):
    calls = []
    real = models._patch_moments
    with pytest.MonkeyPatch.context() as mp:
      mp.setattr(models, "_patch_moments", lambda *a: calls.append(1) or real(*a))
      def used(c, impl, bn="transductive", downsample="max_pool", dtype=jnp.float32):
        calls.clear()
        block = ConvBlock(4, bn=bn, conv_impl=impl, downsample=downsample)
        x = jnp.ones((2, 6, 6, c), dtype)
        block.apply(block.init(jax.random.PRNGKey(0), x), x)
        return bool(calls)
      assert used(1, "im2col") and used(1, "winograd")
      assert not used(models.PATCH_MOMENTS_BELOW_CHANNELS, "im2col")   # wider patches
      assert not used(1, "xla") and not used(1, "shifted")
      assert not used(1, "im2col", bn="none")
      assert not used(1, "im2col", downsample="stride")
      assert not used(1, "im2col", dtype=jnp.bfloat16)                 # 16-bit: from y

  def test_second_order_meta_gradient_with_per_step_bn_and_an_odd_size(self):
    # The path in a whole model: 1 channel, 17x17 images (odd: the pool drops
    # a row and a column the statistics count), MAML++'s per-step BN, against
    # XLA's convolution (statistics from y) in float64.
    calls = []
    real = models._patch_moments
    with pytest.MonkeyPatch.context() as mp, jax.enable_x64(True):
      mp.setattr(models, "_patch_moments", lambda *a: calls.append(1) or real(*a))
      grad, _ = _float64_maml_gradient(("xla", "im2col"), (17, 17, 1), meta_batch=2, shots=1,
                                       queries=2, filters=4, bn="per_step", bn_steps=2)
      ref = grad("xla")
      assert not calls
      chex.assert_trees_all_close(grad("im2col"), ref, rtol=1e-9, atol=1e-12)
      assert calls


def test_config_model_and_inner_loop_record_follow_the_config_keys():
  # problem_for wires downsample into the model; eval.json's bn_in_inner_loop
  # says what the inner loop did with batch norm.
  from metajax import config as config_lib, fewshot, models
  assert config_lib.DOWNSAMPLES == models.DOWNSAMPLES
  c = config_lib.fewshot_base("omniglot")
  c.update(filters=4, downsample="stride")
  p = fewshot.problem_for(c, (28, 28, 1)).init_params(jax.random.PRNGKey(0))
  assert p["head"]["kernel"].shape == (4, 5)                  # 28 -> 2 x 2, averaged
  c.downsample = "max_pool"
  p = fewshot.problem_for(c, (84, 84, 3)).init_params(jax.random.PRNGKey(0))
  assert p["head"]["kernel"].shape == (5 * 5 * 4, 5)          # 84 -> 5 x 5, flattened
  record = lambda **kw: fewshot.bn_in_inner_loop(
      config_lib.validate(_with(c, **kw)),
      fewshot.algorithm(_with(c, **kw)))
  assert record() is True
  assert record(bn_outer_only=True) is False
  assert record(algorithm="anil") is False
  assert record(algorithm="mamlpp", bn="per_step") is False
  assert record(bn="none") is None
  assert record(algorithm="protonet") is None


def _with(config, **changes):
  c = config.copy_and_resolve_references()
  c.update(changes)
  return c


@pytest.mark.xla_optimized  # the reference is XLA's default compile, passes on
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="-O1 is CPU's option")
def test_meta_step_with_cpu_compiler_options_matches_the_default_compile(monkeypatch):
  # Training compiles the meta-step with compiler_options() (on CPU: LLVM -O1
  # and the older fusion emitters): two second-order conv-4 meta-steps must
  # match XLA's default compile.
  import optax
  from metajax import step as step_lib
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  assert step_lib.compiler_options("gpu") is None
  # (The fusion-emitter option only where this jaxlib's XLA has it.)
  emitters = ({"xla_cpu_use_fusion_emitters": False}
              if step_lib._known_option("xla_cpu_use_fusion_emitters", False) else {})
  assert step_lib.compiler_options("cpu") == {"xla_backend_optimization_level": 1, **emitters}
  monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=3")
  assert step_lib.compiler_options("cpu") == (emitters or None)  # the user's level wins
  monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=3 "
                     "--xla_cpu_use_fusion_emitters=true")
  assert step_lib.compiler_options("cpu") is None
  # A whole flag, not a substring: a dump path that contains the name sets nothing.
  monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/xla_cpu_use_fusion_emitters_ab")
  assert step_lib.compiler_options("cpu") == {"xla_backend_optimization_level": 1, **emitters}
  monkeypatch.delenv("XLA_FLAGS")
  # An option this jaxlib's XLA lacks is left out, not passed (compile would refuse it).
  assert not step_lib._known_option("xla_no_such_option_here", True)
  with monkeypatch.context() as m:
    m.setattr(step_lib, "_known_option",
              lambda name, value: name != "xla_cpu_use_fusion_emitters")
    assert step_lib.compiler_options("cpu") == {"xla_backend_optimization_level": 1}
  flag = "jax_disable_most_optimizations"
  was = jax.config.values.get(flag)
  jax.config.update(flag, True)
  try:
    assert step_lib.compiler_options("cpu") is None  # would override its -O0
  finally:
    jax.config.update(flag, was)

  problem = Problem(ways=3, filters=4, image_shape=(16, 16, 1), conv_impl="im2col")
  sample = lambda key: synthetic_tasks(key, meta_batch=2, ways=3, shots=1, queries=2,
                                       image_shape=(16, 16, 1))
  algo = Algorithm.named("maml", steps=1, inner_lr=0.4, batching="scan", task_chunk=1)
  # SGD, not Adam: the conv biases before batch norm have zero meta-gradient up
  # to rounding, which Adam would blow up to full-size steps of random sign.
  optimizer = optax.sgd(0.5)
  step = step_lib.make_meta_step(algo, problem.loss_fn, sample, optimizer)
  state0 = step_lib.init_state(algo, problem.init_params(jax.random.PRNGKey(0)),
                               optimizer, jax.random.PRNGKey(1))
  init = lambda: jax.tree.map(jnp.copy, state0)  # the chunk donates its state
  chunk = step_lib.make_train_chunk(step, 2)
  lowered = chunk.lower(init())
  got_state, got = step_lib.compile_lowered(lowered)(init())  # as training compiles it
  want_state, want = lowered.compile()(init())
  np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
  chex.assert_trees_all_close(got_state.params, want_state.params, rtol=1e-5, atol=1e-5)


def _numpy_conv4(params, x, downsample, bn, eps=1e-5):
  """Conv-4 written out in numpy, float64, in the papers' order: 3x3 'SAME'
  convolution (stride 1, or 2 with TensorFlow's padding), batch norm with the
  batch's statistics, ReLU, 2x2 max-pool; then flatten (or average the
  positions, stride) and the linear head. Nothing of metajax.models is used."""
  h = x.astype(np.float64)
  for i in range(4):
    p = params[f"block_{i}"]
    k, b = np.asarray(p["kernel"], np.float64), np.asarray(p["bias"], np.float64)
    n, hh, ww, _ = h.shape
    stride = 2 if downsample == "stride" else 1
    oh, ow = -(-hh // stride), -(-ww // stride)
    # TF 'SAME': total padding max((o-1)*s + 3 - size, 0), the smaller half first.
    ph, pw = max((oh - 1) * stride + 3 - hh, 0), max((ow - 1) * stride + 3 - ww, 0)
    hp = np.pad(h, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    out = np.zeros((n, oh, ow, k.shape[-1]))
    for r in range(oh):
      for c in range(ow):
        window = hp[:, r * stride:r * stride + 3, c * stride:c * stride + 3, :]
        out[:, r, c, :] = np.einsum("nijc,ijco->no", window, k)
    h = out + b
    if bn != "none":
      mean, var = h.mean(axis=(0, 1, 2)), h.var(axis=(0, 1, 2))
      h = (h - mean) / np.sqrt(var + eps) * np.asarray(p["bn_scale"][0]) + np.asarray(
          p["bn_bias"][0])
    h = np.maximum(h, 0)
    if downsample == "max_pool":
      n, hh, ww, c = h.shape
      h = h[:, :hh // 2 * 2, :ww // 2 * 2].reshape(n, hh // 2, 2, ww // 2, 2, c).max(axis=(2, 4))
  features = h.mean(axis=(1, 2)) if downsample == "stride" else h.reshape(h.shape[0], -1)
  return features @ np.asarray(params["head"]["kernel"]) + np.asarray(params["head"]["bias"])


@pytest.mark.parametrize("downsample,bn,conv_impl", [
    ("max_pool", "transductive", "im2col"), ("max_pool", "transductive", "xla"),
    ("max_pool", "none", "im2col"), ("stride", "transductive", "im2col"),
    ("stride", "none", "xla")])
def test_conv4_logits_match_a_numpy_conv4(downsample, bn, conv_impl):
  """The whole model against an independent numpy forward pass, with BN scales
  of both signs (the pool-first order takes a window's minimum there)."""
  with jax.enable_x64(True):
    model = Conv4(ways=5, filters=6, bn=bn, conv_impl=conv_impl, downsample=downsample)
    x = jax.random.normal(jax.random.PRNGKey(0), (7, 28, 28, 1), jnp.float64)
    params = model.init(jax.random.PRNGKey(1), x)["params"]
    keys = iter(jax.random.split(jax.random.PRNGKey(2), 16))
    params = jax.tree_util.tree_map_with_path(
        lambda path, v: (jax.random.normal(next(keys), v.shape, v.dtype)
                         if str(path[-1].key) in ("bn_scale", "bn_bias", "bias") else v),
        params)
    assert any(float(jnp.min(params[f"block_{i}"].get("bn_scale", jnp.ones(1)))) < 0
               for i in range(4)) or bn == "none"
    for fn in (model.apply, jax.jit(model.apply)):
      np.testing.assert_allclose(np.asarray(fn({"params": params}, x)),
                                 _numpy_conv4(params, np.asarray(x), downsample, bn),
                                 rtol=1e-9, atol=1e-9)
