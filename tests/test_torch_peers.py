"""The PyTorch peers of the benchmark compute the same meta-gradients as metajax.

The speed ratios of `python -m metajax.bench --suite peers` only mean something
if both sides do the same arithmetic. Here each peer (the learn2learn-style
loop `torch-loop` and `torch-func`, written independently in PyTorch) and
metajax's `maml_loss` (im2col convolutions, max-pool before batch norm) get the
same weights and the same episodes in float64, and their meta-gradients of one
meta-step (second and first order, two inner steps, two tasks) must agree to
rounding. Needs the `bench` extra (PyTorch); skipped where it is not installed.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from metajax.bench import torch_peers  # noqa: E402
from metajax.maml import maml_loss  # noqa: E402
from metajax.tasks.fewshot import Problem  # noqa: E402

WAYS, SHOTS, QUERIES, TASKS, STEPS, LR = 5, 1, 3, 2, 2, 0.4
FILTERS, SHAPE = 8, (28, 28, 1)  # 28 -> 14 -> 7 -> 3 -> 1: one feature position


def _to_jax(torch_params):
  """Peer's flat list (OIHW kernels) -> metajax's pytree (HWIO kernels)."""
  t = [p.detach().numpy() for p in torch_params]
  params = {}
  for i in range(4):
    w, b, scale, shift = t[4 * i:4 * i + 4]
    params[f"block_{i}"] = {"kernel": w.transpose(2, 3, 1, 0), "bias": b,
                            "bn_scale": scale[None], "bn_bias": shift[None]}
  params["head"] = {"kernel": t[-2].T, "bias": t[-1]}
  return params


def _from_jax(grads):
  out = []
  for i in range(4):
    g = grads[f"block_{i}"]
    out += [g["kernel"].transpose(3, 2, 0, 1), g["bias"], g["bn_scale"][0], g["bn_bias"][0]]
  return out + [grads["head"]["kernel"].T, grads["head"]["bias"]]


# F.batch_norm (batch statistics) under torch.func.vmap: its second derivative
# came out wrong with PyTorch 2.13.0, which is why the second-order torch-func
# peer writes the batch norm out. Not strict: a PyTorch that fixes it passes.
_PYTORCH_KERNEL_UNDER_VMAP = pytest.param(
    "maml", "make_step_func", True, id="maml-make_step_func-F.batch_norm",
    marks=pytest.mark.xfail(strict=False, reason="F.batch_norm's second derivative "
                            "under torch.func.vmap was wrong in PyTorch 2.13.0"))


@pytest.mark.parametrize("algo,make_step,pytorch_kernel", [
    ("maml", "make_step_loop", False), ("fomaml", "make_step_loop", False),
    ("maml", "make_step_func", False), ("fomaml", "make_step_func", False),
    _PYTORCH_KERNEL_UNDER_VMAP])
def test_peer_meta_gradient_equals_metajax(algo, make_step, pytorch_kernel, monkeypatch):
  if pytorch_kernel:
    monkeypatch.setattr(torch_peers, "batch_norm_by_hand", torch_peers.batch_norm)
  torch.set_default_dtype(torch.float64)
  try:
    generator = torch.Generator().manual_seed(0)
    params = torch_peers.init_params(WAYS, FILTERS, SHAPE, generator)
    # Non-trivial batch-norm affine parameters, some scales negative (the
    # max-pool-first path takes a window's minimum there).
    with torch.no_grad():
      for i in range(4):
        params[4 * i + 1].normal_(0, 0.1, generator=generator)
        params[4 * i + 2].uniform_(-1.5, 1.5, generator=generator)
        params[4 * i + 3].normal_(0, 0.1, generator=generator)
    p = dict(meta_batch=TASKS, ways=WAYS, shots=SHOTS, queries=QUERIES, steps=STEPS,
             inner_lr=LR, filters=FILTERS, image_shape=SHAPE)
    # The episodes the peer's step will draw: the same generator state, replayed.
    state = generator.get_state()
    (xs, ys), (xq, yq) = torch_peers._episodes(p, generator)
    generator.set_state(state)
    theta = _to_jax(params)  # before the peer's step changes them

    # The peer's meta-gradient: its step with an optimiser that only keeps .grad.
    class KeepGrad:
      def zero_grad(self):
        for q in params:
          q.grad = None

      def step(self):
        pass

    getattr(torch_peers, make_step)(algo, p, params, KeepGrad())(generator)
    peer = [q.grad.numpy() for q in params]
  finally:
    torch.set_default_dtype(torch.float32)

  with jax.enable_x64(True):
    problem = Problem(ways=WAYS, filters=FILTERS, image_shape=SHAPE, conv_impl="im2col")
    nhwc = lambda x: jnp.asarray(x.numpy().transpose(0, 1, 3, 4, 2))
    tasks = {"support": (nhwc(xs), jnp.asarray(ys.numpy())),
             "query": (nhwc(xq), jnp.asarray(yq.numpy()))}

    def meta_gradient(first_order):
      def meta_loss(theta):
        return jax.vmap(lambda task: maml_loss(
            problem.loss_fn, theta, task, steps=STEPS, lr=LR,
            first_order=first_order))(tasks).mean()
      return _from_jax(jax.tree.map(np.asarray, jax.grad(meta_loss)(theta)))

    ours = meta_gradient(first_order=algo == "fomaml")
    other_order = meta_gradient(first_order=algo != "fomaml")

  assert len(ours) == len(peer)
  for i, (a, b) in enumerate(zip(ours, peer)):
    np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-10, err_msg=f"parameter {i}")
  # Not vacuous: the gradients are far from zero, and the other order's differ
  # from the peer's by far more than the tolerance above.
  assert max(np.abs(g).max() for g in peer) > 1e-3
  assert max(np.abs(a - b).max() / np.abs(b).max() for a, b in zip(other_order, peer)) > 1e-3


@pytest.mark.parametrize("device", [
    "cpu", pytest.param("cuda", marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="PyTorch sees no GPU"))])
@pytest.mark.parametrize("impl,algo", [("torch-loop", "maml"), ("torch-loop", "reptile"),
                                       ("torch-func", "maml"), ("torch-func", "fomaml")])
def test_run_cell_reports_a_timed_step(impl, algo, device, monkeypatch):
  monkeypatch.setitem(torch_peers.PRESETS, "tiny", dict(
      ways=2, shots=1, queries=2, meta_batch=2, steps=1, inner_lr=0.1, filters=4,
      image_shape=(16, 16, 1)))  # 16 -> 8 -> 4 -> 2 -> 1
  r = torch_peers.run_cell({"impl": impl, "preset": "tiny", "algo": algo, "iters": 2,
                            "device": device})
  assert r["backend"] == device and r["n"] == 2 and r["min_s"] <= r["median_s"] <= r["max_s"]
  assert r["median_s"] > 0 and r["peak_rss_mb"] > 50
  assert (r["device_peak_mb"] is None) == (device == "cpu")
  if device == "cuda":
    assert r["device_peak_mb"] > 0
