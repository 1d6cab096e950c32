"""Models, as flax modules. The last layer is always named "head" (ANIL)."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class MLP(nn.Module):
  """MLP with ReLU: x_NxD -> y_NxO (MAML's sinusoid net is 1-40-40-1)."""
  hidden: Sequence[int] = (40, 40)
  out: int = 1

  @nn.compact
  def __call__(self, x_NxD):
    h = x_NxD
    for i, width in enumerate(self.hidden):
      h = nn.relu(nn.Dense(width, name=f"hidden_{i}")(h))
    return nn.Dense(self.out, name="head")(h)


# ------------------------------------------------------------------ conv-4
CONV_IMPLS = ("xla", "im2col", "shifted", "hybrid")
BN_MODES = ("transductive", "per_step", "none")


def conv3x3(x_NxHxWxC, kernel_3x3xCxO, impl: str = "xla"):
  """3x3 'SAME' convolution, stride 1, in one of three equivalent forms.

  xla:     lax.conv_general_dilated. Under vmap with per-task kernels it
           becomes a grouped convolution, which XLA's CPU backend runs slowly.
  im2col:  the 9 shifted views concatenated on channels, then one matmul
           (N*H*W x 9C) @ (9C x O); under vmap a batched matmul.
  shifted: sum over the 9 offsets of (N*H*W x C) @ (C x O); no 9x patch
           buffer, smaller matmuls.
  All are built from slices, pads and dots, so every order of derivative is
  again slices, pads and dots.
  """
  if impl == "xla":
    return _xla_conv(x_NxHxWxC, kernel_3x3xCxO)
  if impl == "hybrid":
    return _hybrid_conv(x_NxHxWxC, kernel_3x3xCxO)
  n, h, w, c = x_NxHxWxC.shape
  o = kernel_3x3xCxO.shape[-1]
  xp = jnp.pad(x_NxHxWxC, ((0, 0), (1, 1), (1, 1), (0, 0)))
  views = [xp[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)]
  if impl == "im2col":
    out = _patches(x_NxHxWxC) @ kernel_3x3xCxO.reshape(9 * c, o)
  elif impl == "shifted":
    k_9xCxO = kernel_3x3xCxO.reshape(9, c, o)
    out = sum(v.reshape(n * h * w, c) @ k_9xCxO[t] for t, v in enumerate(views))
  else:
    raise ValueError(f"conv impl {impl!r} is not one of {CONV_IMPLS}")
  return out.reshape(n, h, w, o)


def _xla_conv(x_NxHxWxC, kernel_3x3xCxO):
  return jax.lax.conv_general_dilated(
      x_NxHxWxC, kernel_3x3xCxO, (1, 1), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _patches(x_NxHxWxC):
  """im2col: (N*H*W, 9*C) rows of 3x3 neighbourhoods, zero-padded."""
  n, h, w, c = x_NxHxWxC.shape
  xp = jnp.pad(x_NxHxWxC, ((0, 0), (1, 1), (1, 1), (0, 0)))
  views = [xp[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)]
  return jnp.concatenate(views, axis=-1).reshape(n * h * w, 9 * c)


@jax.custom_vjp
def _hybrid_conv(x_NxHxWxC, kernel_3x3xCxO):
  return _xla_conv(x_NxHxWxC, kernel_3x3xCxO)


def _hybrid_fwd(x, kernel):
  return _xla_conv(x, kernel), (x, kernel)


def _hybrid_bwd(res, g_NxHxWxO):
  """Input gradient: the same conv with the flipped, transposed kernel (XLA's
  fast forward path, and again `_hybrid_conv`, so every higher derivative
  stays on it); kernel gradient: one GEMM over im2col patches instead of
  XLA's slow CPU kernel-gradient convolution."""
  x, kernel = res
  c, o = kernel.shape[2], kernel.shape[3]
  kernel_t = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
  dx = _hybrid_conv(g_NxHxWxO, kernel_t)
  dk = (_patches(x).T @ g_NxHxWxO.reshape(-1, o)).reshape(3, 3, c, o)
  return dx, dk


_hybrid_conv.defvjp(_hybrid_fwd, _hybrid_bwd)


def max_pool2x2(x_NxHxWxC):
  """2x2 max-pool, stride 2, 'VALID' (odd sizes lose their last row/column).

  The elementwise max of the four strided views: its derivatives are masks
  and strided pads, several times faster on XLA's CPU backend than
  reduce_window's select-and-scatter (measured: 3 ms vs 78 ms for the
  backward of a 75x28x28x64 block), which also matters at second order.
  """
  n, h, w, c = x_NxHxWxC.shape
  x = x_NxHxWxC[:, :h // 2 * 2, :w // 2 * 2, :]
  return jnp.maximum(jnp.maximum(x[:, 0::2, 0::2], x[:, 0::2, 1::2]),
                     jnp.maximum(x[:, 1::2, 0::2], x[:, 1::2, 1::2]))


def batch_norm(x_NxHxWxC, scale_C, bias_C, eps=1e-5):
  """Normalises with the statistics of this batch (transductive, as in MAML)."""
  mean = jnp.mean(x_NxHxWxC, axis=(0, 1, 2))
  var = jnp.mean(jnp.square(x_NxHxWxC - mean), axis=(0, 1, 2))
  return (x_NxHxWxC - mean) * jax.lax.rsqrt(var + eps) * scale_C + bias_C


class ConvBlock(nn.Module):
  """[3x3 conv, batch norm, ReLU, 2x2 max-pool]."""
  filters: int
  bn: str = "transductive"
  bn_steps: int = 1           # per_step: number of (scale, bias) sets
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, x_NxHxWxC, step=0):
    c = x_NxHxWxC.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (3, 3, c, self.filters))
    bias = self.param("bias", nn.initializers.zeros, (self.filters,))
    h = conv3x3(x_NxHxWxC, kernel, self.conv_impl) + bias
    if self.bn != "none":
      sets = self.bn_steps if self.bn == "per_step" else 1
      scale = self.param("bn_scale", nn.initializers.ones, (sets, self.filters))
      shift = self.param("bn_bias", nn.initializers.zeros, (sets, self.filters))
      idx = jnp.minimum(step, sets - 1) if self.bn == "per_step" else 0
      h = batch_norm(h, scale[idx], shift[idx])
    return max_pool2x2(nn.relu(h))


class Conv4(nn.Module):
  """Conv-4 of the MAML papers: 4 ConvBlocks and a linear head to `ways`.

  64 filters on Omniglot (28x28x1), 32 on mini-ImageNet (84x84x3).
  x_NxHxWxC -> logits_NxWays. `step` selects per-step BN parameters
  (bn="per_step", MAML++); statistics are always those of the batch.
  """
  ways: int
  filters: int = 64
  bn: str = "transductive"
  bn_steps: int = 1
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, x_NxHxWxC, step=0):
    h = x_NxHxWxC
    for i in range(4):
      h = ConvBlock(self.filters, self.bn, self.bn_steps, self.conv_impl,
                    name=f"block_{i}")(h, step)
    return nn.Dense(self.ways, name="head")(h.reshape(h.shape[0], -1))
