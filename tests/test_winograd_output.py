"""Winograd's output transform and its adjoint (two linear primitives; the adjoint
a CPU kernel in float32), against NumPy's einsum with Lavin & Gray's Aᵀ, finite
differences, a loop over vmap, and XLA's convolution in a MAML meta-gradient."""

import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np

from metajax import kernels, models, winograd

HAS_COMPILER = bool(kernels.find_compiler())

A_T = np.array([[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]])   # Aᵀ (2 x 4)

# (G, N, T, U, O): the Omniglot 14x14 layer's, mini-ImageNet's 42x42 (32 channels),
# channel counts that are not a multiple of any vector width, several groups.
SHAPES = [(1, 5, 7, 7, 64), (1, 3, 21, 21, 32), (2, 3, 2, 5, 7), (3, 1, 1, 1, 1), (1, 2, 3, 2, 19)]


def _np_output(m):      # (G, 16, N, T, U, O) -> (G, N, 2T, 2U, O)
  g, _, n, t, u, o = m.shape
  y = np.einsum("wp,hq,gpqntuo->gnthuwo", A_T, A_T, m.reshape(g, 4, 4, n, t, u, o))
  return y.reshape(g, n, 2 * t, 2 * u, o)


def _np_adjoint(dy):    # (G, N, 2T, 2U, O) -> (G, 16, N, T, U, O)
  g, n, h2, w2, o = dy.shape
  d = dy.reshape(g, n, h2 // 2, 2, w2 // 2, 2, o)
  return np.einsum("wp,hq,gnthuwo->gpqntuo", A_T, A_T, d).reshape(g, 16, n, h2 // 2, w2 // 2, o)


output = lambda m: winograd._out_p.bind(m)
adjoint = lambda dy: winograd._out_adj_p.bind(dy)


class WinogradOutputTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_both_directions_match_numpy_in_float32(self):
    rng = np.random.RandomState(0)
    for g, n, t, u, o in SHAPES:
      m = rng.randn(g, 16, n, t, u, o).astype(np.float32)
      dy = rng.randn(g, n, 2 * t, 2 * u, o).astype(np.float32)
      np.testing.assert_allclose(self.variant(output)(m), _np_output(m.astype(np.float64)),
                                 rtol=1e-5, atol=1e-5)
      np.testing.assert_allclose(self.variant(adjoint)(dy), _np_adjoint(dy.astype(np.float64)),
                                 rtol=1e-5, atol=1e-5)

  def test_shape_errors_name_the_expected_layout(self):
    with self.assertRaisesRegex(TypeError, r"expected \(G, 16, N, T, U, O\), got float32\[1,15"):
      output(jnp.ones((1, 15, 2, 2, 2, 3)))
    with self.assertRaisesRegex(TypeError, r"expected \(G, N, 2T, 2U, O\), got float32\[1,2,3,4"):
      adjoint(jnp.ones((1, 2, 3, 4, 5)))

  def test_xla_form_of_the_adjoint_matches_numpy(self):
    # What runs off CPU, in float64 and without the kernel.
    with jax.enable_x64(True):
      dy = np.random.RandomState(4).randn(2, 3, 4, 6, 5)
      np.testing.assert_allclose(jax.jit(winograd._output_adjoint)(dy), _np_adjoint(dy),
                                 rtol=1e-13, atol=1e-13)

  def test_second_order_inside_shard_map_on_two_devices(self):
    # Images split over two CPU devices, the kernel replicated: the MAML-shaped
    # second derivative inside shard_map equals the unsplit one, with the
    # kernel (float32) and with XLA's form (float64).
    code = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import PartitionSpec as P
from metajax import winograd
jax.config.update("jax_enable_x64", True)
mesh = jax.sharding.Mesh(np.array(jax.devices()), ("x",))
for dtype, tol in ((jnp.float32, 1e-4), (jnp.float64, 1e-10)):
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 6, 6, 3), dtype)
  k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 5), dtype) / 5
  loss = lambda k, x: jnp.sum(jnp.tanh(winograd.conv3x3(x, k)))
  outer = lambda k, x: loss(k - 0.1 * jax.grad(loss)(k, x), x)
  # k made varying: each device adapts it to its own images (a replicated k's
  # gradient would be summed over devices inside the inner step).
  per_device = lambda k, x: jax.grad(outer)(jax.lax.pcast(k, ("x",), to="varying"), x)
  split = jax.shard_map(lambda k, x: jax.lax.psum(per_device(k, x), "x"), mesh=mesh,
                        in_specs=(P(), P("x")), out_specs=P())
  whole = sum(jax.grad(outer)(k, x[i:i + 2]) for i in (0, 2))
  np.testing.assert_allclose(jax.jit(split)(k, x), whole, rtol=tol, atol=tol)
print("ok")
"""
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="2")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "ok", out.stdout

  def test_float32_cpu_programs_call_the_kernel(self):
    if not HAS_COMPILER or jax.default_backend() != "cpu":
      self.skipTest("no C++ compiler, or not on CPU")
    assert kernels.available()
    hlo = lambda x: jax.jit(adjoint).lower(x).compile().as_text()
    assert "metajax_winograd_output_adjoint" in hlo(jnp.ones((1, 2, 4, 4, 8)))
    with jax.enable_x64(True):
      assert "metajax_winograd_output_adjoint" not in hlo(jnp.ones((1, 2, 4, 4, 8), jnp.float64))

  def test_derivatives_to_second_order_against_finite_differences(self):
    with jax.enable_x64(True):
      rng = np.random.RandomState(1)
      m, dy = rng.randn(2, 16, 1, 2, 3, 3), rng.randn(2, 1, 4, 6, 3)
      # Each is the other's transpose: <output(m), dy> = <m, adjoint(dy)>.
      np.testing.assert_allclose(np.vdot(output(m), dy), np.vdot(m, adjoint(dy)), rtol=1e-12)
      f = lambda m: jnp.sum(jnp.sin(output(m)))
      b = lambda dy: jnp.sum(jnp.sin(adjoint(dy)))
      jax.test_util.check_grads(f, (m,), order=2, modes=("fwd", "rev"))
      jax.test_util.check_grads(b, (dy,), order=2, modes=("fwd", "rev"))

  @chex.variants(with_jit=True, without_jit=True)
  def test_vmap_matches_a_loop(self):
    rng = np.random.RandomState(2)
    m = jnp.asarray(rng.randn(3, 2, 16, 2, 2, 3, 5), jnp.float32)     # batch, G, 16, N, T, U, O
    dy = jnp.asarray(rng.randn(3, 2, 2, 4, 6, 5), jnp.float32)
    for fn, x in ((output, m), (adjoint, dy)):
      want = np.stack([fn(x[i]) for i in range(3)])
      np.testing.assert_allclose(self.variant(jax.vmap(fn))(x), want, rtol=1e-6, atol=1e-6)
      np.testing.assert_allclose(self.variant(jax.vmap(fn, in_axes=1, out_axes=2))(
          jnp.swapaxes(x, 0, 1)), np.moveaxis(want, 0, 2), rtol=1e-6, atol=1e-6)

  def test_maml_meta_gradient_in_float32_matches_xla_conv(self):
    # A conv-4 block (Winograd conv, batch norm, ReLU, pool) with one inner step
    # on a support batch and the loss on a query batch, vmapped over 2 tasks: the
    # meta-gradient (reverse over reverse) and a Hessian-vector product (forward
    # over reverse), Winograd's form (the adjoint kernel on CPU) against XLA's conv.
    keys = jax.random.split(jax.random.PRNGKey(3), 5)
    xs = jax.random.normal(keys[0], (2, 3, 10, 10, 16))
    xq = jax.random.normal(keys[1], (2, 6, 10, 10, 16))
    params = (jax.random.normal(keys[2], (3, 3, 16, 16)) / 12, 1 + 0.1 * jax.random.normal(
        keys[3], (16,)), jnp.zeros(16))
    v = jax.tree.map(lambda p: jax.random.normal(keys[4], p.shape), params)

    def make(conv):
      def loss(p, x):
        out = models.bn_relu_pool(conv(x, p[0]), p[1], p[2])
        return jnp.mean(jnp.tanh(out) ** 2)
      def meta(p, xs, xq):
        inner = jax.tree.map(lambda a, g: a - 0.5 * g, p, jax.grad(loss)(p, xs))
        return loss(inner, xq)
      grad = jax.jit(jax.vmap(jax.grad(meta), in_axes=(None, 0, 0)))
      hvp = jax.jit(jax.vmap(lambda p, x: jax.jvp(lambda p: jax.grad(loss)(p, x), (p,), (v,))[1],
                             in_axes=(None, 0)))
      if conv is winograd.conv3x3 and HAS_COMPILER and jax.default_backend() == "cpu":
        assert "metajax_winograd_output_adjoint" in grad.lower(params, xs, xq).compile().as_text()
      return grad(params, xs, xq), hvp(params, xs)

    got = make(winograd.conv3x3)
    want = make(lambda x, k: models.conv3x3(x, k, "xla"))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-5 * float(jnp.abs(b).max()))
