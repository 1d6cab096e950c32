"""Models, as flax modules. The last layer is always named "head" (ANIL)."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from metajax import tn_product, winograd

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
CONV_IMPLS = ("xla", "im2col", "shifted", "hybrid", "winograd")
# "winograd" takes Winograd's form only where it paid in whole CPU meta-steps
# (docs/RESULTS.md, "Winograd F(2x2, 3x3) convolutions"): stride 1, this many
# input channels or more (with conv-4's first layer, of 1 or 3 channels, in it
# too the 5w1s steps were slower than im2col's), and at least this many output
# positions N*H*W of one task (MAML's Omniglot training tasks, 5 images of
# 14x14 per set, and iMAML on 5 support images were 11-26% slower in it).
WINOGRAD_MIN_CHANNELS = 16
WINOGRAD_MIN_POSITIONS = 2000
# Below this many input channels im2col's patches are built in two stages
# (_patches).
IM2COL_TWO_STAGE_BELOW_CHANNELS = 16
# Below this many input channels an im2col layer under batch norm takes its
# output's batch statistics from the (N*H*W x 9C) patches (_patch_moments),
# not from the (N*H*W x O) output: Omniglot's first layer (1 channel:
# second-order MAML steps 2-8% faster on CPU, first order within noise), not
# mini-ImageNet's (3 channels: the 27x27 covariance cost more than it saved;
# docs/RESULTS.md).
PATCH_MOMENTS_BELOW_CHANNELS = 2
BN_MODES = ("transductive", "per_step", "none")


def conv3x3(x_NxHxWxC, kernel_3x3xCxO, impl: str = "xla", stride: int = 1):
  """3x3 'SAME' convolution, stride 1 or 2, in one of five equivalent forms.

  xla:     lax.conv_general_dilated. Under vmap with per-task kernels it
           becomes a grouped convolution, which XLA's CPU backend runs slowly.
  im2col:  the 9 shifted views concatenated on channels, then one matmul
           (N*H*W x 9C) @ (9C x O); under vmap a batched matmul.
  hybrid:  XLA's conv forward and input gradient, im2col kernel gradient.
  shifted: sum over the 9 offsets of (N*H*W x C) @ (C x O); no 9x patch
           buffer, smaller matmuls.
  winograd: F(2x2, 3x3) (metajax.winograd) for stride 1 with at least
           WINOGRAD_MIN_CHANNELS input channels and WINOGRAD_MIN_POSITIONS
           output positions, in float32/float64; im2col otherwise (so always
           im2col in MAML's stride-2 Omniglot model; in 16-bit types its
           transforms would round where im2col does not).
  All give the same numbers (tested to second order in float64); which is
  fastest depends on the backend (`python -m metajax.bench --suite strategies`).

  stride=2 is TensorFlow's / XLA's 'SAME' with stride 2 (MAML's Omniglot
  model): ceil(H/2) x ceil(W/2) outputs, which are the stride-1 outputs at
  every other position, starting at 1 on an even size and 0 on an odd one.
  im2col and shifted take only those positions' patches; hybrid computes the
  stride-1 convolution and keeps them.
  """
  if stride not in (1, 2):
    raise ValueError(f"conv stride must be 1 or 2, got {stride!r}")
  impl = _form(x_NxHxWxC, kernel_3x3xCxO, impl, stride)
  if impl == "xla":
    return _xla_conv(x_NxHxWxC, kernel_3x3xCxO, stride)
  c, o = kernel_3x3xCxO.shape[2:]
  if impl == "winograd":
    return winograd.conv3x3(x_NxHxWxC, kernel_3x3xCxO)
  if impl == "hybrid":
    out = _hybrid_conv(x_NxHxWxC, kernel_3x3xCxO)
    return _every_other(out) if stride == 2 else out
  if impl == "im2col":
    patches_Px9C, kernel_9CxO, (n, h, w) = _im2col_operands(x_NxHxWxC, kernel_3x3xCxO, stride)
    out = _product(patches_Px9C, kernel_9CxO)
  elif impl == "shifted":
    views = _views(x_NxHxWxC, stride)
    n, h, w, _ = views[0].shape
    k_9xCxO = kernel_3x3xCxO.reshape(9, c, o)
    out = sum(v.reshape(n * h * w, c) @ k_9xCxO[t] for t, v in enumerate(views))
  else:
    raise ValueError(f"conv impl {impl!r} is not one of {CONV_IMPLS}")
  return out.reshape(n, h, w, o)


def _form(x_NxHxWxC, kernel_3x3xCxO, impl, stride):
  """The form conv3x3 computes: `impl`, except that "winograd" is im2col where
  Winograd's form did not pay (see conv3x3)."""
  if impl != "winograd":
    return impl
  n, h, w, c = x_NxHxWxC.shape
  if (stride == 1 and c >= WINOGRAD_MIN_CHANNELS and n * h * w >= WINOGRAD_MIN_POSITIONS
      and jnp.dtype(x_NxHxWxC.dtype).itemsize >= 4):
    return "winograd"
  return "im2col"


def conv3x3_moments(x_NxHxWxC, kernel_3x3xCxO, impl: str = "xla", stride: int = 1):
  """conv3x3 -> (y_NxHxWxO, moments), moments = (mean_O, var_O) of y over
  batch and positions where they come cheaper from im2col's patches
  (_patch_moments: the im2col form, stride 1, fewer than
  PATCH_MOMENTS_BELOW_CHANNELS input channels, float32 or float64), else None
  (the caller takes them from y). Not in 16-bit types: k^T S k cancels, and
  with 3 significant digits the variance could lose them all."""
  c = x_NxHxWxC.shape[-1]
  if (stride != 1 or c >= PATCH_MOMENTS_BELOW_CHANNELS
      or jnp.dtype(x_NxHxWxC.dtype).itemsize < 4
      or _form(x_NxHxWxC, kernel_3x3xCxO, impl, stride) != "im2col"):
    return conv3x3(x_NxHxWxC, kernel_3x3xCxO, impl, stride), None
  patches_Px9C, kernel_9CxO, (n, h, w) = _im2col_operands(x_NxHxWxC, kernel_3x3xCxO, stride)
  y_NxHxWxO = _product(patches_Px9C, kernel_9CxO).reshape(n, h, w, -1)
  return y_NxHxWxO, _patch_moments(patches_Px9C, kernel_9CxO)


def _product(patches_Px9C, kernel_9CxO):
  """patches @ kernel, with the kernel gradient (patchesᵀ @ output gradient,
  contracted over the P positions) in tn_product's CPU kernel."""
  return tn_product.matmul(patches_Px9C[None], kernel_9CxO[None])[0]


def _im2col_operands(x_NxHxWxC, kernel_3x3xCxO, stride):
  """im2col's product operands: (P x 9C) patches, P = N*H'*W', the (9C x O)
  kernel, and (N, H', W')."""
  c, o = kernel_3x3xCxO.shape[2:]
  patches_NxHxWx9C = _patches(x_NxHxWxC, stride)
  n, h, w, _ = patches_NxHxWx9C.shape
  return (patches_NxHxWx9C.reshape(n * h * w, 9 * c), kernel_3x3xCxO.reshape(9 * c, o),
          (n, h, w))


def _patch_moments(patches_Px9C, kernel_9CxO):
  """Per-channel mean and (biased) variance of y = patches @ kernel over its
  P rows, from the patches: mean = mu @ kernel and var_o = k_oᵀ S k_o, with
  mu the patches' mean and S their (9C x 9C) covariance.

  Exact (y is linear in the patches), derivatives included. Why: on
  Omniglot conv-4's first layer has 1 input channel, so its patches are 9
  wide against 64 output channels, and its full-resolution output is the
  step's largest tensor; the statistics' passes over y forward, and their
  terms in y's gradient backward, become small products (docs/RESULTS.md,
  "Batch statistics from the patches"). S is taken about mu with mu's
  gradient stopped and corrected by (mu - c)(mu - c)ᵀ, which is 0 in value,
  as _moments does for the variance, so a large mean against the spread
  costs no accuracy. k_oᵀ S k_o still cancels where the kernel sums to about
  zero on smooth images: in float32 its relative error was up to ~6e-6
  (stroke-like images, Laplacian kernel) against ~1e-7 from y itself, far
  below batch norm's eps (tests/test_models.py). HIGHEST: TPU matmuls would
  round these statistics to bfloat16 (there the statistics are those of the
  exact product, y that of the default precision).
  """
  hi = jax.lax.Precision.HIGHEST
  mu_9C = jnp.mean(patches_Px9C, axis=0)
  c_9C = jax.lax.stop_gradient(mu_9C)
  centred_Px9C = patches_Px9C - c_9C
  d_9C = mu_9C - c_9C
  cov_9Cx9C = (jnp.einsum("pi,pj->ij", centred_Px9C, centred_Px9C, precision=hi)
               / patches_Px9C.shape[0] - jnp.outer(d_9C, d_9C))
  mean_O = jnp.dot(mu_9C, kernel_9CxO, precision=hi)
  var_O = jnp.sum(kernel_9CxO * jnp.dot(cov_9Cx9C, kernel_9CxO, precision=hi), axis=0)
  return mean_O, var_O


def _every_other(x_NxHxWxC):
  """The positions a stride-2 'SAME' window is centred on (see conv3x3)."""
  _, h, w, _ = x_NxHxWxC.shape
  return x_NxHxWxC[:, (h + 1) % 2::2, (w + 1) % 2::2, :]


def _xla_conv(x_NxHxWxC, kernel_3x3xCxO, stride=1):
  return jax.lax.conv_general_dilated(
      x_NxHxWxC, kernel_3x3xCxO, (stride, stride), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _views(x_NxHxWxC, stride: int = 1):
  """The 9 shifted (zero-padded) views x[:, h+i-1, w+j-1, :], i, j in 0..2;
  with stride 2 only the positions a 'SAME' window is centred on."""
  n, h, w, c = x_NxHxWxC.shape
  xp = jnp.pad(x_NxHxWxC, ((0, 0), (1, 1), (1, 1), (0, 0)))
  views = [xp[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)]
  return views if stride == 1 else [_every_other(v) for v in views]


def _patches(x_NxHxWxC, stride: int = 1):
  """im2col: (N, H', W', 9*C) 3x3 neighbourhoods, zero-padded, at the output
  positions (H' = H, or ceil(H/2) with stride 2), ordered (row, column, C).

  With few channels (conv-4's first layer: 1 or 3) and stride 1, the 3 column
  offsets are concatenated first and then the 3 row offsets: one 9-way
  concatenate writes 4-12 byte pieces into every row of a buffer that need
  not fit in cache (57 MB for mini-ImageNet's 75 query images), in 9 passes;
  two 3-way ones write larger pieces in 3 passes each. 9-11% faster
  mini-ImageNet MAML steps on CPU (docs/RESULTS.md, "im2col in two stages").
  From 16 channels on the pieces are 64 bytes or more and the one
  concatenate is as fast, with the simpler adjoint (slices).
  """
  n, h, w, c = x_NxHxWxC.shape
  if stride == 1 and c < IM2COL_TWO_STAGE_BELOW_CHANNELS:
    xp = jnp.pad(x_NxHxWxC, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = jnp.concatenate([xp[:, :, j:j + w, :] for j in range(3)], axis=-1)  # (N, H+2, W, 3C)
    return jnp.concatenate([cols[:, i:i + h] for i in range(3)], axis=-1)
  return jnp.concatenate(_views(x_NxHxWxC, stride), axis=-1)


@jax.custom_vjp
def _hybrid_conv(x_NxHxWxC, kernel_3x3xCxO):
  return _xla_conv(x_NxHxWxC, kernel_3x3xCxO)


def _hybrid_fwd(x, kernel):
  # The custom function, not _xla_conv: second-order MAML differentiates this
  # rule again, and XLA's own derivative of _xla_conv would bring back its slow
  # CPU kernel-gradient convolution (5.4 s against 3.9 s per Omniglot meta-step).
  return _hybrid_conv(x, kernel), (x, kernel)


def _hybrid_bwd(res, g_NxHxWxO):
  """Input gradient: the same conv with the flipped, transposed kernel (XLA's
  fast forward path, and again `_hybrid_conv`, so every higher derivative
  stays on it); kernel gradient: one GEMM over im2col patches instead of
  XLA's slow CPU kernel-gradient convolution."""
  x, kernel = res
  c, o = kernel.shape[2], kernel.shape[3]
  kernel_t = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
  dx = _hybrid_conv(g_NxHxWxO, kernel_t)
  dk = (_patches(x).reshape(-1, 9 * c).T @ g_NxHxWxO.reshape(-1, o)).reshape(3, 3, c, o)
  return dx, dk


_hybrid_conv.defvjp(_hybrid_fwd, _hybrid_bwd)


@jax.custom_vjp
def max_pool2x2(x_NxHxWxC):
  """2x2 max-pool, stride 2, 'VALID' (odd sizes lose their last row/column).

  The gradient goes to the first maximum of each window (row-major), like
  PyTorch's and XLA's select-and-scatter. The backward pass is written by hand
  as one broadcast-compare-multiply over the contiguous (N, H/2, 2, W/2, 2, C)
  view: XLA's own derivative of a max-pool (select-and-scatter, or the
  transposes of strided slices) makes several full-size passes and dominated
  the CPU profile of a conv-4 meta-step. The backward is linear in the
  incoming gradient, so second-order MAML differentiates through it.
  """
  return _pool_fwd(x_NxHxWxC)[0]


def _even(x_NxHxWxC):
  n, h, w, c = x_NxHxWxC.shape
  return x_NxHxWxC[:, :h // 2 * 2, :w // 2 * 2, :]


def _pool_fwd(x_NxHxWxC):
  x = _even(x_NxHxWxC)
  views = (x[:, 0::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 0::2], x[:, 1::2, 1::2])
  y = jnp.maximum(jnp.maximum(views[0], views[1]), jnp.maximum(views[2], views[3]))
  # Index 0..3 (= 2*row + col) of the first maximum in each window.
  first = jnp.where(views[0] == y, 0, jnp.where(views[1] == y, 1,
                                                jnp.where(views[2] == y, 2, 3)))
  return y, (first.astype(jnp.int8), x_NxHxWxC.shape)


def _pool_bwd(res, g_NxhxwxC):
  first, shape = res
  return (_unpool(g_NxhxwxC, first, shape),)


def _unpool(g_NxhxwxC, first, shape):
  """Routes each window's gradient to its first maximum; zero elsewhere."""
  n, h2, w2, c = g_NxhxwxC.shape
  pos = (2 * jnp.arange(2)[:, None] + jnp.arange(2)[None, :]).astype(jnp.int8)
  hit = first[:, :, None, :, None, :] == pos[None, None, :, None, :, None]
  dx = jnp.where(hit, g_NxhxwxC[:, :, None, :, None, :], 0).reshape(n, 2 * h2, 2 * w2, c)
  return jnp.pad(dx, ((0, 0), (0, shape[1] - 2 * h2), (0, shape[2] - 2 * w2), (0, 0)))


max_pool2x2.defvjp(_pool_fwd, _pool_bwd)


def batch_norm(x_NxHxWxC, scale_C, bias_C, eps=1e-5):
  """Normalises with the statistics of this batch (transductive, as in MAML).

  Left to autodiff: a hand-written closed-form backward was 3x faster on one
  block in isolation but made the whole scanned meta-step 2x slower on CPU
  (measured), so it is not used.
  """
  mean_C, var_C = _moments(x_NxHxWxC)
  return (x_NxHxWxC - mean_C) * jax.lax.rsqrt(var_C + eps) * scale_C + bias_C


def _moments(x_NxHxWxC):
  """Per-channel mean and (biased) variance over batch and positions.

  The variance is written as mean((x - c)^2) - (mean - c)^2 with c a constant
  (the mean, its gradient stopped). That is the variance for any constant c,
  so every derivative is exact; its value here is the two-pass formula's
  (mean - c is exactly 0). Why: autodiff of mean((x - mean)^2) sums the
  full-resolution cotangent of (x - mean) for the mean's path (a reduction of
  a quantity that is 0 in exact arithmetic); with c constant, x's gradient is
  elementwise and fuses with the pool's (docs/RESULTS.md, "Conv bias after
  the pool, and a shifted variance").
  """
  mean_C = jnp.mean(x_NxHxWxC, axis=(0, 1, 2))
  c_C = jax.lax.stop_gradient(mean_C)
  var_C = jnp.mean(jnp.square(x_NxHxWxC - c_C), axis=(0, 1, 2)) - jnp.square(mean_C - c_C)
  return mean_C, var_C


def pool_sign(scale_C, dtype):
  """+1 or -1 per channel: the sign of batch norm's factor scale/sigma, which
  is the sign of the scale (sigma > 0; a zero scale counts as +1). It says
  which extreme of each 2x2 window the affine map sends to the max
  (bn_relu_pool). A constant of the program, not a function to differentiate,
  and known before the convolution: the statistics do not enter it."""
  return jax.lax.stop_gradient(jnp.where(scale_C >= 0, 1, -1).astype(dtype))


def bn_relu_pool(x_NxHxWxC, scale_C=None, shift_C=None, eps=1e-5, bias_C=None, moments=None,
                 sign_C=None):
  """max_pool2x2(relu(batch_norm(x + bias))), or max_pool2x2(relu(x + bias))
  without BN, with the pool taken first: (N, H, W, C) -> (N, H//2, W//2, C).

  bias_C (optional, a conv's bias) is added after the pool:
  max(x + b) = max(x) + b, and batch norm's statistics shift with it, so under
  BN it cancels: (max + b) - (mean + b), written out so that the parameter
  stays in the graph with its exact gradient (zero, up to rounding). Adding it
  before would be one more full-resolution pass forward and a full-resolution
  sum backward. moments: x's per-channel (mean_C, var_C) where the caller has
  them (conv3x3_moments); otherwise they are taken from x.

  BN (statistics of the whole full-resolution x) is a per-channel affine map
  and ReLU is monotone, so both commute with a 2x2 max: where a channel's
  BN factor scale/sigma is negative, the max of the affine image is the
  affine image of the window's min, taken here as -max(-x). Exact, and the
  gradient goes to the same element (only where that factor is exactly 0
  may it pick another element of a tied window). Why: the normalised and
  rectified full-resolution copies are no longer made or kept for the
  backward pass, only x and the pool's argmax (docs/RESULTS.md, "Max-pool
  before batch norm": 23-27% less XLA temp memory for second-order MAML on
  the three benchmark configs, the same time or a little less).

  sign_C: where given (pool_sign(scale_C)), x is already the signed map
  sign_C * x, the caller's convolution with its kernel's output channels
  multiplied by it (exact: a sign flip), and moments, if given, are that
  map's. Why: the multiply by the sign then sits on the small kernel
  gradient instead of on the full-resolution output gradient, where XLA
  cannot fuse it into the kernel-gradient product (ConvBlock; docs/RESULTS.md,
  "The pool's sign in the kernel").
  """
  if scale_C is None:
    pooled = max_pool2x2(x_NxHxWxC)
    return nn.relu(pooled if bias_C is None else pooled + bias_C)
  mean_C, var_C = _moments(x_NxHxWxC) if moments is None else moments
  factor_C = jax.lax.rsqrt(var_C + eps) * scale_C
  if sign_C is None:
    sign_C = pool_sign(scale_C, x_NxHxWxC.dtype)
    extreme = max_pool2x2(x_NxHxWxC * sign_C) * sign_C
  else:                             # x and its moments are sign_C * (the map)
    extreme = max_pool2x2(x_NxHxWxC) * sign_C
    mean_C = mean_C * sign_C
  if bias_C is not None:
    extreme, mean_C = extreme + bias_C, mean_C + bias_C
  return nn.relu((extreme - mean_C) * factor_C + shift_C)


DOWNSAMPLES = ("max_pool", "stride")


class ConvBlock(nn.Module):
  """[3x3 conv, batch norm, ReLU, 2x2 max-pool], or with downsample="stride"
  [3x3 conv of stride 2, batch norm, ReLU] (MAML's Omniglot model)."""
  filters: int
  bn: str = "transductive"
  bn_steps: int = 1           # per_step: number of (scale, bias) sets
  conv_impl: str = "xla"
  downsample: str = "max_pool"

  @nn.compact
  def __call__(self, x_NxHxWxC, step=0):
    c = x_NxHxWxC.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (3, 3, c, self.filters))
    bias = self.param("bias", nn.initializers.zeros, (self.filters,))
    if self.downsample not in DOWNSAMPLES:
      raise ValueError(f"downsample must be one of {DOWNSAMPLES}, got {self.downsample!r}")
    stride = 2 if self.downsample == "stride" else 1
    scale_C = shift_C = sign_C = None
    if self.bn != "none":
      sets = self.bn_steps if self.bn == "per_step" else 1
      scale = self.param("bn_scale", nn.initializers.ones, (sets, self.filters))
      shift = self.param("bn_bias", nn.initializers.zeros, (sets, self.filters))
      if self.bn == "per_step":
        # A one-hot sum, not scale[step]: inside the scanned inner loop the
        # traced index made the second-order MAML++ meta-step 1.6x slower on
        # CPU (docs/RESULTS.md, "Per-step batch norm: a one-hot sum instead of
        # an index"). Elementwise, not a matmul, so no backend rounds the
        # parameters (TPU matmuls default to bfloat16).
        onehot_Sx1 = jax.nn.one_hot(jnp.minimum(step, sets - 1), sets, dtype=scale.dtype)[:, None]
        scale_C, shift_C = (onehot_Sx1 * scale).sum(0), (onehot_Sx1 * shift).sum(0)
      else:
        scale_C, shift_C = scale[0], shift[0]
      if stride == 1 and _form(x_NxHxWxC, kernel, self.conv_impl, stride) == "im2col":
        # The pool's sign in the kernel (bn_relu_pool's sign_C): im2col's
        # kernel gradient is one product with the output gradient, and the
        # multiply by the sign would be a full-resolution pass before it. In
        # Winograd's layers it fuses into the output transform's adjoint, and
        # folding it there too was no faster (docs/RESULTS.md, "The pool's
        # sign in the kernel").
        sign_C = pool_sign(scale_C, kernel.dtype)
    signed_kernel = kernel if sign_C is None else kernel * sign_C
    if self.bn != "none":  # conv3x3_moments decides where the patches give them
      h, moments = conv3x3_moments(x_NxHxWxC, signed_kernel, self.conv_impl, stride)
    else:
      h, moments = conv3x3(x_NxHxWxC, signed_kernel, self.conv_impl, stride), None
    if stride == 1:
      return bn_relu_pool(h, scale_C, shift_C, bias_C=bias, moments=moments, sign_C=sign_C)
    h = h + bias
    return nn.relu(h if scale_C is None else batch_norm(h, scale_C, shift_C))


class Conv4(nn.Module):
  """Conv-4 of the MAML papers: 4 ConvBlocks and a linear head to `ways`.

  64 filters on Omniglot (28x28x1), 32 on mini-ImageNet (84x84x3).
  x_NxHxWxC -> logits_NxWays. `step` selects per-step BN parameters
  (bn="per_step", MAML++); statistics are always those of the batch.
  downsample="max_pool" flattens the last block's output; "stride" (stride-2
  convolutions) averages it over its positions, as MAML's Omniglot code does
  (28x28 -> 2x2 -> filters features).
  """
  ways: int
  filters: int = 64
  bn: str = "transductive"
  bn_steps: int = 1
  conv_impl: str = "xla"
  head: bool = True             # False: return the features (ProtoNet)
  downsample: str = "max_pool"  # or "stride"

  @nn.compact
  def __call__(self, x_NxHxWxC, step=0):
    h = x_NxHxWxC
    for i in range(4):
      h = ConvBlock(self.filters, self.bn, self.bn_steps, self.conv_impl,
                    self.downsample, name=f"block_{i}")(h, step)
    features_NxD = (jnp.mean(h, axis=(1, 2)) if self.downsample == "stride"
                    else h.reshape(h.shape[0], -1))
    if not self.head:
      return features_NxD
    return nn.Dense(self.ways, name="head")(features_NxD)
