"""Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray, 2016) for conv-4's
3x3 'SAME' convolutions.

Each 4x4 input tile d (stride 2) gives a 2x2 output tile Aᵀ[(G k Gᵀ) ⊙ (Bᵀ d B)]A:
a layer becomes 16 products (tiles x C) @ (C x O), 2.25x fewer multiplications
than im2col's (N*H*W x 9C) @ (9C x O), and no 9x patch buffer. It is linear in
the input and in the kernel and made of slices, adds and one batched matmul,
so autodiff gives its gradients and the second derivatives of MAML with the
same structure. Exact in exact arithmetic; in float32 its error against a
float64 truth is no larger than im2col's (tests/test_models.py). Where it is
faster: docs/RESULTS.md ("Winograd F(2x2, 3x3) convolutions").
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from metajax import kernels, tn_product

# G (4x3): the kernel transform, written out in _g as Bᵀ and Aᵀ are in _b_t
# and _a_t.
G_4x3 = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def _g(k, axis):
  """G along `axis` (size 3): the rows (k0, (k0 + k1 + k2)/2, (k0 - k1 + k2)/2,
  k2) on a new leading axis. Adds and halvings, not a matmul with G: as an
  einsum XLA's CPU backend ran the 3x3xCxO -> 4x4xCxO transform and its
  adjoint as small matrix products, ~3% of an Omniglot MAML step
  (docs/RESULTS.md), and a TPU would round its operands to bfloat16."""
  k0, k1, k2 = (jnp.squeeze(p, axis) for p in jax.lax.split(k, (1, 1, 1), axis=axis))
  even, odd = 0.5 * (k0 + k2), 0.5 * k1
  return jnp.stack((k0, even + odd, even - odd, k2))


def _b_t(x, axis):
  """Bᵀ along `axis` (size 2T + 2): the rows x[2i + k], k = 0..3, of T tiles
  at stride 2, as (x0 - x2, x1 + x2, x2 - x1, x1 - x3) on a new leading axis.

  The rows come from a reshape into pairs, lax.split and unit-stride slices,
  and the four results are stacked: autodiff's adjoints are then a concatenate
  and fusible pads. Strided slices, or indexing a stacked result, make a
  full-size pad per term, which ran 7-10x slower on XLA's CPU backend
  (docs/RESULTS.md).
  """
  t = x.shape[axis] // 2 - 1
  pairs = x.reshape(x.shape[:axis] + (t + 1, 2) + x.shape[axis + 1:])
  even, odd = (jnp.squeeze(p, axis + 1) for p in jax.lax.split(pairs, (1, 1), axis=axis + 1))
  lo = lambda a: jax.lax.slice_in_dim(a, 0, t, axis=axis)
  hi = lambda a: jax.lax.slice_in_dim(a, 1, t + 1, axis=axis)
  x0, x1, x2, x3 = lo(even), lo(odd), hi(even), hi(odd)
  return jnp.stack((x0 - x2, x1 + x2, x2 - x1, x1 - x3))


def _a_t(m):
  """Aᵀ on leading axis 0 (size 4) -> the 2 output rows (m0 + m1 + m2,
  m1 - m2 - m3). lax.split, not indexing, for the same reason as in _b_t."""
  m0, m1, m2, m3 = (jnp.squeeze(p, 0) for p in jax.lax.split(m, (1, 1, 1, 1), axis=0))
  return m0 + m1 + m2, m1 - m2 - m3


def conv3x3(x_NxHxWxC, kernel_3x3xCxO):
  """3x3 'SAME' convolution of stride 1, (N, H, W, C) -> (N, H, W, O), any H, W.

  Odd sizes are padded to whole tiles and the extra outputs dropped.
  """
  n, h, w, c = x_NxHxWxC.shape
  o = kernel_3x3xCxO.shape[-1]
  th, tw = (h + 1) // 2, (w + 1) // 2                     # tiles along H / W
  xp = jnp.pad(x_NxHxWxC, ((0, 0), (1, 2 * th + 1 - h), (1, 2 * tw + 1 - w), (0, 0)))
  v = _b_t(_b_t(xp, 1), 3)                      # (4 [W offset], 4 [H offset], N, th, tw, C)
  # G k Gᵀ with the W offset first, as in v: (4 [W offset], 4 [H offset], C, O).
  u_16xCxO = _g(_g(kernel_3x3xCxO, 0), 1).reshape(16, c, o)
  # Its kernel gradient (contracted over the tiles) is tn_product's CPU kernel.
  m = tn_product.matmul(v.reshape(16, n * th * tw, c), u_16xCxO)
  y = _out_p.bind(m.reshape(1, 16, n, th, tw, o))[0]     # (N, 2 th, 2 tw, O)
  return y[:, :h, :w]


def _output_transform(m_Gx16xNxTxUxO):
  """Aᵀ M A per tile: (G, 16 [W offset x H offset], N, T, U, O) -> (G, N, 2T, 2U, O)."""
  g, _, n, th, tw, o = m_Gx16xNxTxUxO.shape
  m = jnp.moveaxis(m_Gx16xNxTxUxO.reshape(g, 4, 4, n, th, tw, o), (1, 2), (0, 1))
  cols = _a_t(m)                                          # 2 [W offset] x (4, G, N, th, tw, O)
  rows = [_a_t(col) for col in cols]                      # [W offset][H offset] (G, N, th, tw, O)
  y = jnp.stack([jnp.stack((rows[0][r], rows[1][r]), axis=4) for r in range(2)], axis=3)
  return y.reshape(g, n, 2 * th, 2 * tw, o)               # (G, N, th, 2, tw, 2, O) interleaved


def _output_adjoint(dy_GxNxHxWxO):
  """The output transform's adjoint: (G, N, 2T, 2U, O) -> (G, 16, N, T, U, O),
  A's columns (m0, m1, m2, m3) <- (d0, d0 + d1, d0 - d1, -d1) along W, then
  along H. Written out (not jax.linear_transpose, whose cotangent type would
  not carry shard_map's varying axes); what metajax/kernels/winograd.cc does."""
  g, n, h2, w2, o = dy_GxNxHxWxO.shape
  tiles = dy_GxNxHxWxO.reshape(g, n, h2 // 2, 2, w2 // 2, 2, o)
  a = lambda d0, d1: (d0, d0 + d1, d0 - d1, -d1)
  # d[hr][wc] (G, N, T, U, O): the tile's output at H offset hr, W offset wc.
  d = [[jnp.squeeze(x, (3, 5)) for x in jax.lax.split(row, (1, 1), axis=5)]
       for row in jax.lax.split(tiles, (1, 1), axis=3)]
  e0, e1 = a(*d[0]), a(*d[1])                             # [p] along W, per H offset
  m = jnp.stack([jnp.stack(a(e0[p], e1[p]), axis=1) for p in range(4)], axis=1)
  return m.reshape(g, 16, n, h2 // 2, w2 // 2, o)         # (G, 4 [p], 4 [q], ...) -> 4p + q


# The output transform and its adjoint as two linear primitives, each the
# other's transpose, so every order of derivative alternates between them.
# On CPU in float32 the adjoint is a custom call (metajax/kernels): XLA's own
# fusions of it recomputed the incoming gradient's producer (batch norm's and
# the pool's backward) in each group of its 16 outputs (docs/RESULTS.md).
# G: independent groups, which vmap folds its axis into.
_out_p = Primitive("metajax_winograd_output")
_out_adj_p = Primitive("metajax_winograd_output_adjoint")


def _check(name, x, rank):
  if x.ndim != rank or (rank == 5 and (x.shape[2] % 2 or x.shape[3] % 2)) or (
      rank == 6 and x.shape[1] != 16):
    expected = "(G, N, 2T, 2U, O)" if rank == 5 else "(G, 16, N, T, U, O)"
    raise TypeError(f"{name}: expected {expected}, got {x.str_short()}")


def _out_shape(m):
  _check("winograd output transform", m, 6)
  g, _, n, t, u, o = m.shape
  return m.update(shape=(g, n, 2 * t, 2 * u, o))


def _adj_shape(dy):
  _check("winograd output adjoint", dy, 5)
  g, n, h2, w2, o = dy.shape
  return dy.update(shape=(g, 16, n, h2 // 2, w2 // 2, o))


_out_p.def_abstract_eval(_out_shape)
_out_adj_p.def_abstract_eval(_adj_shape)
_out_p.def_impl(jax.jit(lambda m: _out_p.bind(m)))            # outside jit: as inside
_out_adj_p.def_impl(jax.jit(lambda dy: _out_adj_p.bind(dy)))
mlir.register_lowering(_out_p, mlir.lower_fun(_output_transform, multiple_results=False))
_out_adj_xla = mlir.lower_fun(_output_adjoint, multiple_results=False)
mlir.register_lowering(_out_adj_p, _out_adj_xla)


def _out_adj_cpu(ctx, dy):
  if ctx.avals_in[0].dtype == jnp.float32 and kernels.available():
    return jax.ffi.ffi_lowering("metajax_winograd_output_adjoint")(ctx, dy)
  return _out_adj_xla(ctx, dy)


mlir.register_lowering(_out_adj_p, _out_adj_cpu, platform="cpu")
ad.deflinear2(_out_p, lambda ct, m: [_out_adj_p.bind(ct)])
ad.deflinear2(_out_adj_p, lambda ct, dy: [_out_p.bind(ct)])


def _batch(prim, args, dims):
  """vmap: the mapped axis folded into G (no transposes where it leads)."""
  (x,), (d,) = args, dims
  x = jnp.moveaxis(x, d, 0)
  b, g = x.shape[:2]
  out = prim.bind(x.reshape((b * g,) + x.shape[2:]))
  return out.reshape((b, g) + out.shape[1:]), 0


batching.primitive_batchers[_out_p] = functools.partial(_batch, _out_p)
batching.primitive_batchers[_out_adj_p] = functools.partial(_batch, _out_adj_p)
