"""The CPU kernels of tn_product and matmul and the two bilinear primitives,
against float64 NumPy products, XLA's own products to second order, and a loop
over vmap."""

import functools
import os
import subprocess
import sys

import chex
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from metajax import kernels, tn_product
from metajax.tn_product import matmul

HAS_COMPILER = bool(kernels.find_compiler())

# (P, R, C, O): the Winograd layer's shape, the first layers' (columns fewer than 16 or not
# a multiple of the vector width: computed transposed), odd sizes, a long R split over the
# threads, and every remainder of the register blocks of each target (AVX-512's 8 rows x 32
# columns, AVX2's 6 x 16, SSE's and NEON's 6 or 8 x 8) in rows and in columns.
SHAPES = [(16, 3675, 64, 64), (1, 5880, 64, 9), (1, 5880, 9, 64), (3, 100, 9, 40),
          (2, 37, 5, 7), (2, 300, 17, 48), (1, 1, 1, 1), (4, 513, 32, 32), (1, 7000, 32, 27),
          (2, 50, 20, 27)] + [(1, 19, c, 2 * c + 3) for c in range(2, 17)] + [
              (1, 23, 7, o) for o in range(1, 17)]


def _operands(shape, seed=0):
  p, r, c, o = shape
  ka, kb = jax.random.split(jax.random.PRNGKey(seed))
  return jax.random.normal(ka, (p, r, c)), jax.random.normal(kb, (p, r, o))


def _need_compiler(test):
  # Where there is a compiler the kernel must build: these tests then fail, not skip.
  if not HAS_COMPILER or jax.default_backend() != "cpu":
    test.skipTest("no C++ compiler, or not on CPU")


def _uses_kernel(fn, *args, target="metajax_tn_product"):
  return target in jax.jit(fn).lower(*args).compile().as_text()


def _matmul_operands(shape, transpose_b, seed=0):
  p, r, c, o = shape
  ka, kb = jax.random.split(jax.random.PRNGKey(seed))
  return (jax.random.normal(ka, (p, r, c)),
          jax.random.normal(kb, (p, o, c) if transpose_b else (p, c, o)))


class TnProductTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_against_float64_products(self):
    _need_compiler(self)
    for shape in SHAPES:
      a, b = _operands(shape)
      want = np.einsum("prc,pro->pco", np.float64(a), np.float64(b))
      got = np.asarray(self.variant(tn_product.tn_product)(a, b))
      assert got.dtype == np.float32 and got.shape == want.shape
      # float32 rounding of sums of R products; XLA's own product is no closer.
      xla = np.asarray(jax.jit(tn_product._xla_tn)(a, b))
      scale = np.abs(want).max()
      np.testing.assert_allclose(got, want, atol=2e-6 * np.sqrt(shape[1]) * scale, err_msg=str(shape))
      assert np.abs(got - want).max() <= 4 * np.abs(xla - want).max() + 1e-6 * scale, shape

  @chex.variants(with_jit=True, without_jit=True)
  def test_matmul_against_float64_products(self):
    _need_compiler(self)
    # (P, R, C, O) of a (P, R, C) @ b, with b (P, C, O) or (P, O, C) transposed:
    # the inner loop's shapes (~1000 rows), the im2col layers' (576 wide either
    # way), the first layer's (9), empty ones, every remainder of the register
    # blocks' rows (6 or 8) and of 8 columns, and several of 16 and 32
    shapes = [(16, 980, 64, 64), (1, 980, 576, 64), (1, 980, 64, 576), (1, 4000, 9, 64),
              (2, 300, 17, 48), (1, 1, 1, 1), (3, 0, 4, 5), (2, 3, 0, 4), (0, 5, 3, 4)] + [
                  (1, r, 7, o) for r, o in zip(range(2, 16), (1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 17,
                                                              24, 31, 33))]
    for transpose_b in (False, True):
      fn = tn_product.matmul_bt if transpose_b else matmul
      for shape in shapes:
        a, b = _matmul_operands(shape, transpose_b)
        want = np.einsum("prc,poc->pro" if transpose_b else "prc,pco->pro",
                         np.float64(a), np.float64(b))
        got = np.asarray(self.variant(fn)(a, b))
        assert got.dtype == np.float32 and got.shape == want.shape, (shape, got.shape)
        xla = np.asarray(jax.jit(functools.partial(tn_product._xla_matmul,
                                                   transpose_b=transpose_b))(a, b))
        scale = max(np.abs(want).max(initial=0), 1.0)
        np.testing.assert_allclose(got, want, atol=2e-6 * np.sqrt(shape[2]) * scale,
                                   err_msg=f"{shape} transpose_b={transpose_b}")
        assert np.abs(got - want).max(initial=0) <= (4 * np.abs(xla - want).max(initial=0)
                                                     + 1e-6 * scale), shape

  def test_cpu_float32_matmul_and_its_gradients_take_the_kernels(self):
    _need_compiler(self)
    assert kernels.available()
    a, b = _matmul_operands((2, 50, 8, 16), False)
    assert _uses_kernel(matmul, a, b, target="metajax_matmul")
    hlo = jax.jit(jax.grad(lambda a, b: jnp.sum(jnp.sin(matmul(a, b))), argnums=(0, 1))).lower(
        a, b).compile().as_text()
    # the forward product, the input gradient (g bᵀ, b passed as it is) and the kernel gradient
    assert hlo.count('custom_call_target="metajax_matmul"') == 2, hlo
    assert "transpose_b = true" in hlo or "transpose_b=true" in hlo.replace(" ", ""), hlo
    assert 'custom_call_target="metajax_tn_product"' in hlo
    with jax.enable_x64(True):
      assert not _uses_kernel(matmul, np.float64(a), np.float64(b), target="metajax_matmul")

  def test_cpu_float32_takes_the_kernel_and_float64_does_not(self):
    _need_compiler(self)
    assert kernels.available()
    a, b = _operands((2, 50, 8, 16))
    assert _uses_kernel(tn_product.tn_product, a, b)
    # not for operands wider than KERNEL_MAX_WIDTH (XLA's product was faster there)
    wide = tn_product.KERNEL_MAX_WIDTH + 1
    assert not _uses_kernel(tn_product.tn_product, jnp.ones((1, 20, wide)), jnp.ones((1, 20, 8)))
    assert not _uses_kernel(tn_product.tn_product, jnp.ones((1, 20, 8)), jnp.ones((1, 20, wide)))
    # one product is passed as (R, C) and (R, O), the shape XLA gives the
    # forward product's operand, so that an operand both use is built once
    a1, b1 = _operands((1, 50, 8, 16))
    hlo = jax.jit(tn_product.tn_product).lower(a1, b1).compile().as_text()
    assert "operand_layout_constraints={f32[50,8]{1,0}, f32[50,16]{1,0}}" in hlo, hlo
    # and autodiff's kernel gradient of matmul is that product
    u = jnp.ones((2, 8, 16))
    assert _uses_kernel(jax.grad(lambda u: jnp.sum(matmul(a, u) ** 2)), u)
    with jax.enable_x64(True):
      a64, b64 = np.float64(a), np.float64(b)
      assert not _uses_kernel(tn_product.tn_product, a64, b64)
      np.testing.assert_allclose(tn_product.tn_product(a64, b64),
                                 np.einsum("prc,pro->pco", a64, b64), rtol=1e-12)

  def test_disabled_kernel_gives_xla_products(self):
    code = ("import jax, jax.numpy as jnp; from metajax import kernels as k, tn_product as t;"
            "a = jnp.ones((2, 5, 3)); b = jnp.ones((2, 5, 4));"
            "print(k.available(), 'metajax_tn_product' in "
            "jax.jit(t.tn_product).lower(a, b).compile().as_text(), float(t.tn_product(a, b).sum()),"
            "'metajax_matmul' in jax.jit(t.matmul_bt).lower(a, a).compile().as_text(),"
            "float(t.matmul_bt(a, a).sum()))")
    env = dict(os.environ, METAJAX_CPU_KERNELS="0", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False", "120.0", "False", "150.0"]

  def test_shard_map_with_one_operand_split_over_devices(self):
    # Inside shard_map, a replicated operand meets a split one: the products
    # must come out varying, as XLA's own do, so that a replicated out_spec is
    # refused and the replicated operand's gradient is summed over devices
    # (as dot_general's, and the whole batch's).
    code = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import PartitionSpec as P
from metajax.tn_product import matmul
mesh = jax.sharding.Mesh(np.array(jax.devices()), ("x",))
a = jnp.arange(2 * 1 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 3) / 10
w = jnp.ones((1, 3, 5), jnp.float32)
dot = lambda a, w: jax.lax.dot_general(a, w, (((2,), (1,)), ((0,), (0,))))
grad = lambda mm: jax.shard_map(jax.grad(lambda a, w: jnp.sum(mm(a, w)), argnums=1), mesh=mesh,
                                in_specs=(P("x"), P()), out_specs=P())(a, w)
g, want = grad(matmul), grad(dot)
np.testing.assert_allclose(g, want, rtol=1e-6)
whole = jax.grad(lambda w: sum(jnp.sum(dot(a[i:i + 1], w)) for i in range(2)))(w)
np.testing.assert_allclose(want, whole, rtol=1e-6)
try:
  jax.shard_map(lambda a, w: matmul(a, w), mesh=mesh, in_specs=(P("x"), P()), out_specs=P())(a, w)
except Exception as e:
  print("refused", type(e).__name__)
"""
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="2")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("refused"), out.stdout

  def test_matmul_forward(self):
    a, _ = _operands((3, 20, 6, 6))
    b = jax.random.normal(jax.random.PRNGKey(9), (3, 6, 5))
    np.testing.assert_allclose(matmul(a, b), np.einsum("prc,pco->pro", np.float64(a), np.float64(b)),
                               rtol=1e-5, atol=1e-5)

  def test_mixed_dtypes_are_promoted_as_matmul_does(self):
    a = jnp.ones((1, 4, 3), jnp.bfloat16)
    b = jnp.ones((1, 3, 2), jnp.float32)
    assert matmul(a, b).dtype == jnp.matmul(a, b).dtype == jnp.float32
    assert tn_product.tn_product(a, jnp.ones((1, 4, 2))).dtype == jnp.float32

  def test_shape_errors_name_the_operands(self):
    with pytest.raises(TypeError, match=r"matmul takes \(P, R, C\) and \(P, C, O\).*float32\[2,5,3\] and float32\[2,4,3\]"):
      matmul(jnp.ones((2, 5, 3)), jnp.ones((2, 4, 3)))
    with pytest.raises(TypeError, match="tn_product takes"):
      tn_product.tn_product(jnp.ones((2, 5, 3)), jnp.ones((2, 6, 3)))

  def test_derivatives_to_second_order_in_float64(self):
    # Every rule (JVP, both transposes, and theirs), forward and reverse, against
    # finite differences.
    with jax.enable_x64(True):
      a = np.random.RandomState(0).randn(2, 7, 3)
      b = np.random.RandomState(1).randn(2, 3, 4)
      c = np.random.RandomState(2).randn(2, 7, 4)
      jax.test_util.check_grads(matmul, (a, b), order=2, modes=("fwd", "rev"))
      jax.test_util.check_grads(tn_product.matmul_bt, (a, np.swapaxes(b, 1, 2)), order=2,
                                modes=("fwd", "rev"))
      jax.test_util.check_grads(tn_product.tn_product, (a, c), order=2, modes=("fwd", "rev"))

  def test_second_order_in_float32_matches_xla_products(self):
    _need_compiler(self)
    # A MAML-shaped function: one inner step on u, a loss at the adapted u;
    # its meta-gradient (reverse over reverse) and a Hessian-vector product
    # (forward over reverse, as iMAML) with the kernel against dot_general's.
    a_s, _ = _operands((16, 300, 16, 16), seed=3)
    a_q, _ = _operands((16, 900, 16, 16), seed=4)
    u0 = 0.1 * jax.random.normal(jax.random.PRNGKey(5), (16, 16, 16))
    v = jax.random.normal(jax.random.PRNGKey(6), u0.shape)

    def make(mm):
      def loss(u, a):
        return jnp.mean(jnp.tanh(mm(a, u)) ** 2)
      def outer(u):
        adapted = u - 0.5 * jax.grad(loss)(u, a_s)
        return loss(adapted, a_q)
      return outer, loss

    plain = lambda a, u: jax.lax.dot_general(a, u, (((2,), (1,)), ((0,), (0,))))
    for f in (lambda outer, loss: jax.grad(outer),
              lambda outer, loss: lambda u: jax.jvp(jax.grad(lambda u: loss(u, a_s)), (u,), (v,))[1]):
      got = jax.jit(f(*make(matmul)))(u0)
      want = jax.jit(f(*make(plain)))(u0)
      np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6 * float(jnp.abs(want).max()))
    assert _uses_kernel(jax.grad(make(matmul)[0]), u0)

  @chex.variants(with_jit=True, without_jit=True)
  def test_vmap_matches_a_loop(self):
    a, c = _operands((4, 30, 5, 24), seed=7)
    b = jax.random.normal(jax.random.PRNGKey(8), (4, 5, 24))
    a_B, c_B = a.reshape(2, 2, 30, 5), c.reshape(2, 2, 30, 24)
    for fn, x, y in ((tn_product.tn_product, a_B, c_B), (matmul, a_B, b.reshape(2, 2, 5, 24)),
                     (tn_product.matmul_bt, a_B, jnp.swapaxes(b, 1, 2).reshape(2, 2, 24, 5))):
      want = np.stack([fn(x[i], y[i]) for i in range(2)])
      np.testing.assert_allclose(self.variant(jax.vmap(fn))(x, y), want, rtol=1e-5, atol=1e-5)
      # batched along another axis, and against an unbatched operand
      np.testing.assert_allclose(self.variant(jax.vmap(fn, in_axes=(1, 1), out_axes=1))(
          jnp.swapaxes(x, 0, 1), jnp.swapaxes(y, 0, 1)), np.swapaxes(want, 0, 1), rtol=1e-5, atol=1e-5)
      want0 = np.stack([fn(x[i], y[0]) for i in range(2)])
      np.testing.assert_allclose(self.variant(jax.vmap(fn, in_axes=(0, None)))(x, y[0]), want0,
                                 rtol=1e-5, atol=1e-5)

  def test_checkpoint_policy_saves_the_products(self):
    # remat="dots" keeps the products' outputs, these two included: the
    # gradient then computes the forward product once, not again backward.
    a, _ = _operands((2, 8, 4, 4))
    f = lambda u: jnp.sum(jnp.sin(matmul(a, u)))
    u = jnp.ones((2, 4, 4))

    def products(policy):
      jaxpr = jax.make_jaxpr(jax.grad(jax.checkpoint(f, policy=policy)))(u)
      count = lambda eqns: sum(
          (e.primitive.name == "metajax_matmul")
          + sum(count(j.eqns) for j in jax.extend.core.jaxprs_in_params(e.params))
          for e in eqns)
      return count(jaxpr.eqns)

    assert products(tn_product.dots_saveable) == 1
    assert products(jax.checkpoint_policies.nothing_saveable) == 2
