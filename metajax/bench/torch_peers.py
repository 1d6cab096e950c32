"""PyTorch peers for the benchmark (optional: `pip install -e '.[bench]'`).

The same conv-4 (3x3 conv + bias, batch norm with batch statistics, ReLU,
2x2 max-pool; linear head), the same synthetic episode shapes and the same
Adam outer step as the metajax cells, written two ways:

  torch-loop  learn2learn/higher style: a Python loop over the tasks of the
              meta-batch, `autograd.grad(create_graph=True)` inner steps,
              `.backward()` per task accumulating the meta-gradient.
  torch-func  torch.func: functional_call-free pure functions, `grad` inner
              steps, `vmap` over tasks, one `grad` for the meta-gradient.
              For second order its batch norm is written out
              (`batch_norm_by_hand`): under `vmap`, F.batch_norm's second
              derivative comes out wrong (PyTorch 2.13.0;
              tests/test_torch_peers.py). First order takes no second
              derivative and keeps PyTorch's kernel.

Runs on CUDA when PyTorch sees a GPU (a cell's "device" overrides), timed with
`torch.cuda.synchronize` and reporting `torch.cuda.max_memory_allocated`.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from metajax.bench import memory
from metajax.bench.presets import PRESETS, timed_iters


def init_params(ways, filters, image_shape, generator, device="cpu"):
  h, w, c = image_shape
  params = []
  for _ in range(4):
    fan_in = 9 * c
    params += [torch.randn(filters, c, 3, 3, generator=generator) / fan_in ** 0.5,
               torch.zeros(filters), torch.ones(filters), torch.zeros(filters)]
    c, h, w = filters, h // 2, w // 2
  feat = c * h * w
  params += [torch.randn(ways, feat, generator=generator) / feat ** 0.5,
             torch.zeros(ways)]
  return [p.to(device).requires_grad_() for p in params]


def batch_norm(h_NxCxHxW, scale_C, shift_C):
  """Batch statistics, PyTorch's kernel (as nn.BatchNorm2d without running stats)."""
  return F.batch_norm(h_NxCxHxW, None, None, scale_C, shift_C, training=True)


def batch_norm_by_hand(h_NxCxHxW, scale_C, shift_C, eps=1e-5):
  """The same batch norm written out. With `torch.func.vmap` over tasks, the
  second derivative of F.batch_norm (the one second-order MAML takes through
  the inner step) is wrong in PyTorch 2.13.0; this form's is right."""
  mean = h_NxCxHxW.mean((0, 2, 3), keepdim=True)
  var = h_NxCxHxW.var((0, 2, 3), unbiased=False, keepdim=True)
  return ((h_NxCxHxW - mean) * torch.rsqrt(var + eps) * scale_C[:, None, None]
          + shift_C[:, None, None])


def forward(params, x_NxCxHxW, norm=batch_norm):
  h = x_NxCxHxW
  for i in range(4):
    w, b, scale, shift = params[4 * i:4 * i + 4]
    h = F.conv2d(h, w, b, padding=1)
    h = norm(h, scale, shift)
    h = F.max_pool2d(F.relu(h), 2)
  return F.linear(h.flatten(1), params[-2], params[-1])


def _loss(params, x, y, norm=batch_norm):
  return F.cross_entropy(forward(params, x, norm), y)


def _loss_by_hand(params, x, y):
  return _loss(params, x, y, norm=batch_norm_by_hand)


def _adapt_loop(params, xs, ys, steps, lr, create_graph):
  for _ in range(steps):
    grads = torch.autograd.grad(_loss(params, xs, ys), params,
                                create_graph=create_graph)
    params = [p - lr * g for p, g in zip(params, grads)]
  return params


def _episodes(p, generator):
  device = generator.device
  def part(per_class):
    # Noise at 8-bit levels, as metajax.tasks.fewshot.noise_images draws.
    shape = (p["meta_batch"], p["ways"] * per_class, p["image_shape"][2], *p["image_shape"][:2])
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator,
                      device=device).to(torch.get_default_dtype()).div_(255)
    y = torch.arange(p["ways"], device=device).repeat_interleave(per_class)
    return x, y.expand(p["meta_batch"], -1).contiguous()
  return part(p["shots"]), part(p["queries"])


def make_step_loop(algo, p, params, opt):
  steps, lr = p["steps"], p["inner_lr"]

  def step(generator):
    (xs, ys), (xq, yq) = _episodes(p, generator)
    opt.zero_grad()
    total = 0.0
    for t in range(p["meta_batch"]):
      if algo == "reptile":
        phi = _adapt_loop([q.detach().requires_grad_() for q in params],
                          xs[t], ys[t], steps, lr, create_graph=False)
        for q, f in zip(params, phi):
          q.grad = (q.grad if q.grad is not None else 0) + (q.detach() - f.detach()) / p["meta_batch"]
        with torch.no_grad():  # the query loss metajax's Reptile step also reports
          total = total + _loss([f.detach() for f in phi], xq[t], yq[t]) / p["meta_batch"]
        continue
      phi = _adapt_loop(params, xs[t], ys[t], steps, lr,
                        create_graph=algo == "maml")
      if algo == "fomaml":  # gradient at phi, applied to theta
        phi = [f.detach().requires_grad_() for f in phi]
        grads = torch.autograd.grad(_loss(phi, xq[t], yq[t]), phi)
        for q, g in zip(params, grads):
          q.grad = (q.grad if q.grad is not None else 0) + g / p["meta_batch"]
      else:
        loss = _loss(phi, xq[t], yq[t]) / p["meta_batch"]
        loss.backward()
        total = total + loss.detach()  # no per-task host sync on a GPU
    opt.step()
    return float(total)
  return step


def make_step_func(algo, p, params, opt):
  from torch.func import grad, vmap
  steps, lr = p["steps"], p["inner_lr"]
  if algo != "maml" and algo != "fomaml":
    raise ValueError(f"torch-func peer implements maml and fomaml, not {algo!r}")

  loss = _loss if algo == "fomaml" else _loss_by_hand

  def task_loss(theta, xs, ys, xq, yq):
    phi = theta
    for _ in range(steps):
      g = grad(loss)(phi, xs, ys)
      if algo == "fomaml":
        g = [gi.detach() for gi in g]
      phi = [a - lr * b for a, b in zip(phi, g)]
    return loss(phi, xq, yq)

  def meta_loss(theta, xs, ys, xq, yq):
    return vmap(task_loss, in_dims=(None, 0, 0, 0, 0))(theta, xs, ys, xq, yq).mean()

  def step(generator):
    (xs, ys), (xq, yq) = _episodes(p, generator)
    theta = [q.detach() for q in params]
    grads = grad(meta_loss)(theta, xs, ys, xq, yq)
    for q, g in zip(params, grads):
      q.grad = g
    opt.step()
    return 0.0
  return step


def _sync(device):
  if device.type == "cuda":
    torch.cuda.synchronize(device)


def run_cell(cell: dict) -> dict:
  iters = timed_iters(cell)
  torch.manual_seed(0)
  p = dict(PRESETS[cell["preset"]])
  if cell.get("steps"):
    p["steps"] = cell["steps"]
  device = torch.device(cell.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
  params = init_params(p["ways"], p["filters"], p["image_shape"],
                       torch.Generator().manual_seed(0), device)
  generator = torch.Generator(device=device).manual_seed(1)  # episodes: not the weights' stream
  opt = torch.optim.Adam(params, lr=1e-3)
  make = make_step_loop if cell["impl"] == "torch-loop" else make_step_func
  step = make(cell["algo"], p, params, opt)
  times = []
  for i in range(iters + 1):  # the first is a warm-up
    if i == 1:
      mark = memory.reset_peak()
      if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t = time.perf_counter()
    step(generator)
    _sync(device)
    times.append(time.perf_counter() - t)
  times = times[1:]
  median = float(np.median(times))
  return dict(impl=cell["impl"], steps=p["steps"], meta_batch=p["meta_batch"],
              median_s=median, min_s=float(np.min(times)), max_s=float(np.max(times)),
              n=len(times), compile_s=None,
              peak_rss_mb=memory.whole_peak_mb(mark), run_rss_mb=memory.run_mb(mark),
              device_peak_mb=(torch.cuda.max_memory_allocated(device) / 2**20
                              if device.type == "cuda" else None),
              tasks_per_s=p["meta_batch"] / median, backend=device.type,
              device=(torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"),
              cudnn_tf32=torch.backends.cudnn.allow_tf32,
              matmul_tf32=torch.backends.cuda.matmul.allow_tf32,
              torch_version=torch.__version__, torch_threads=torch.get_num_threads())
