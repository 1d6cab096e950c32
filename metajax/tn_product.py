"""Batched products that run in hand-written CPU kernels.

A convolution written as products (im2col's patches @ kernel, Winograd's 16
products) has its kernel gradient as aᵀ b contracted over the long axis of
output positions: (P, R, C)ᵀ (P, R, O) -> (P, C, O). XLA's CPU backend runs
that shape at a third of the rate of the forward product (a 64 x 64 output
leaves its libraries little to split; docs/RESULTS.md, "A kernel for the
kernel gradient"), and the forward products themselves at about half its
peak at the inner loop's sizes (~1000 rows; "A kernel for the forward
products"). `matmul(a, b)` is a[p] @ b[p] and `tn_product(a, b)` is a[p]ᵀ b[p];
on CPU in float32 they call metajax/kernels/matmul.cc and tn_product.cc (built
with the C++ compiler on first use and cached: metajax.kernels), elsewhere
XLA's dot_general. They are bilinear primitives whose transposes are each
other's forms (matmul's for a is g bᵀ: matmul with `transpose_b`), with
batching rules, so reverse over reverse (MAML), forward over reverse (iMAML's
Hessian-vector products) and vmap all stay in them.

Without a C++ compiler, or with METAJAX_CPU_KERNELS=0, both are XLA's products
(set it before jax.export-ing a CPU float32 program: the kernel is a custom call
that other machines do not have).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.extend.mlir import ir
from jax.extend.mlir.dialects import stablehlo
from jax.interpreters import ad, batching, mlir

from metajax import kernels

_TARGET = "metajax_tn_product"
_MATMUL_TARGET = "metajax_matmul"


def matmul(a_PxRxC, b_PxCxO):
  """a[p] @ b[p]: (P, R, C) x (P, C, O) -> (P, R, O). Its b-gradient is
  tn_product(a, g): (P, C, O). Mixed dtypes are promoted, as jnp.matmul's."""
  return _matmul_p.bind(*_promoted(a_PxRxC, b_PxCxO), transpose_b=False)


def matmul_bt(a_PxRxC, b_PxOxC):
  """a[p] @ b[p]ᵀ: (P, R, C) x (P, O, C) -> (P, R, O) (matmul's a-gradient)."""
  return _matmul_p.bind(*_promoted(a_PxRxC, b_PxOxC), transpose_b=True)


def tn_product(a_PxRxC, b_PxRxO):
  """a[p]ᵀ @ b[p]: (P, R, C) x (P, R, O) -> (P, C, O), contracted over R."""
  return _tn_p.bind(*_promoted(a_PxRxC, b_PxRxO))


def _promoted(a, b):
  """Both operands in their promoted dtype and, inside shard_map, varying over
  the same mesh axes (as XLA's own products make them)."""
  dtype = jnp.result_type(a, b)
  a, b = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
  va, vb = _varying(a), _varying(b)
  if vb - va:
    a = jax.lax.pcast(a, tuple(sorted(vb - va)), to="varying")
  if va - vb:
    b = jax.lax.pcast(b, tuple(sorted(va - vb)), to="varying")
  return a, b


def _varying(x):
  """The shard_map mesh axes x varies over (its type's: `.mat.varying` in JAX
  0.10, `.vma` before)."""
  t = jax.typeof(x)
  mat = getattr(t, "mat", None)
  return frozenset(mat.varying if mat is not None else getattr(t, "vma", ()))


def _xla_matmul(a, b, *, transpose_b=False):
  return jax.lax.dot_general(a, b, (((2,), (2 if transpose_b else 1,)), ((0,), (0,))))


def _xla_tn(a, b):
  return jax.lax.dot_general(a, b, (((1,), (1,)), ((0,), (0,))))


# --- the primitives -----------------------------------------------------------

def _abstract(name, expected, match, shape):
  def rule(a, b):
    if a.ndim != 3 or b.ndim != 3 or a.dtype != b.dtype or not match(a.shape, b.shape):
      raise TypeError(f"{name} takes {expected} of one dtype, got {a.str_short()} and "
                      f"{b.str_short()}")
    return a.update(shape=shape(a.shape, b.shape))
  return rule


_matmul_p = Primitive("metajax_matmul")
_matmul_abstract = _abstract("matmul", "(P, R, C) and (P, C, O)",
                             lambda a, b: a[0] == b[0] and a[2] == b[1],
                             lambda a, b: (a[0], a[1], b[2]))
_matmul_bt_abstract = _abstract("matmul_bt", "(P, R, C) and (P, O, C)",
                                lambda a, b: a[0] == b[0] and a[2] == b[2],
                                lambda a, b: (a[0], a[1], b[1]))
_matmul_p.def_abstract_eval(
    lambda a, b, *, transpose_b: (_matmul_bt_abstract if transpose_b else _matmul_abstract)(a, b))
_matmul_p.def_impl(jax.jit(lambda a, b, *, transpose_b: _matmul_p.bind(a, b, transpose_b=transpose_b),
                           static_argnames="transpose_b"))   # outside jit: as one
_xla_matmul_lowering = mlir.lower_fun(_xla_matmul, multiple_results=False)
mlir.register_lowering(_matmul_p, _xla_matmul_lowering)

_tn_p = Primitive("metajax_tn_product")
_tn_p.def_abstract_eval(_abstract("tn_product", "(P, R, C) and (P, R, O)",
                                  lambda a, b: a[:2] == b[:2],
                                  lambda a, b: (a[0], a[2], b[2])))
_tn_p.def_impl(jax.jit(lambda a, b: _tn_p.bind(a, b)))
_xla_tn_lowering = mlir.lower_fun(_xla_tn, multiple_results=False)
mlir.register_lowering(_tn_p, _xla_tn_lowering)


# Widest operand the kernel takes. Wider ones (conv-4's 3x3 layer under im2col:
# (980 x 576)ᵀ(980 x 64)) ran slower in the step than XLA's product, which
# splits that output well (docs/RESULTS.md, "A kernel for the kernel gradient").
KERNEL_MAX_WIDTH = 256


def _kernel_call(target, ctx, a, b, **attrs):
  """The FFI call; one product (P = 1) with its operands as (R, C) and (R, O),
  (C, O) or (O, C), the shapes XLA gives a batch-1 dot's. With (1, R, C) here XLA
  built an im2col layer's patches twice, once in each shape (57 MB apiece for
  mini-ImageNet's query set; docs/RESULTS.md)."""
  if ctx.avals_in[0].shape[0] != 1:
    return jax.ffi.ffi_lowering(target)(ctx, a, b, **attrs)
  squeezed = [x.update(shape=x.shape[1:]) for x in (*ctx.avals_in, ctx.avals_out[0])]
  reshape = lambda x, aval: stablehlo.reshape(
      ir.RankedTensorType.get(aval.shape, mlir.dtype_to_ir_type(aval.dtype)), x)
  call = jax.ffi.ffi_lowering(target)(
      ctx.replace(avals_in=squeezed[:2], avals_out=squeezed[2:]),
      reshape(a, squeezed[0]), reshape(b, squeezed[1]), **attrs)
  return [reshape(call[0], ctx.avals_out[0])]


def _tn_cpu_lowering(ctx, a, b):
  a_aval, b_aval = ctx.avals_in
  if not (a_aval.dtype == jnp.float32 and max(a_aval.shape[2], b_aval.shape[2]) <= KERNEL_MAX_WIDTH
          and kernels.available()):
    return _xla_tn_lowering(ctx, a, b)
  return _kernel_call(_TARGET, ctx, a, b)


def _matmul_cpu_lowering(ctx, a, b, *, transpose_b):
  if not (ctx.avals_in[0].dtype == jnp.float32 and kernels.available()):
    return _xla_matmul_lowering(ctx, a, b, transpose_b=transpose_b)
  return _kernel_call(_MATMUL_TARGET, ctx, a, b, transpose_b=transpose_b)


mlir.register_lowering(_tn_p, _tn_cpu_lowering, platform="cpu")
mlir.register_lowering(_matmul_p, _matmul_cpu_lowering, platform="cpu")


# Transposes: each is one of the three forms, so every order of derivative
# stays in these two primitives.
def _matmul_a_t(g, a, b, *, transpose_b):
  return matmul(g, b) if transpose_b else matmul_bt(g, b)      # g b, or g bᵀ


def _matmul_b_t(g, a, b, *, transpose_b):
  return tn_product(g, a) if transpose_b else tn_product(a, g)  # gᵀ a (as bᵀ), or aᵀ g


ad.defbilinear(_matmul_p, _matmul_a_t, _matmul_b_t)
ad.defbilinear(_tn_p,
               lambda g, a, b: matmul_bt(b, g),   # b gᵀ
               lambda g, a, b: matmul(a, g))      # a g


def _batch(prim, args, dims, **params):
  """vmap: the mapped axis is folded into P."""
  size = next(x.shape[d] for x, d in zip(args, dims) if d is not None)
  folded = []
  for x, d in zip(args, dims):
    x = jnp.broadcast_to(x, (size,) + x.shape) if d is None else jnp.moveaxis(x, d, 0)
    p = x.shape[1]
    folded.append(x.reshape((size * p,) + x.shape[2:]))
  out = prim.bind(*folded, **params)
  return out.reshape((size, p) + out.shape[1:]), 0


batching.primitive_batchers[_matmul_p] = functools.partial(_batch, _matmul_p)
batching.primitive_batchers[_tn_p] = functools.partial(_batch, _tn_p)


def dots_saveable(prim, *avals, **params):
  """jax.checkpoint policy: jax.checkpoint_policies.dots_saveable, with these
  two products counted as dots."""
  return prim in (_matmul_p, _tn_p) or jax.checkpoint_policies.dots_saveable(prim, *avals, **params)
