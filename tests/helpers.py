"""Small independent models for gradient tests (plain jnp, no flax)."""

import jax
import jax.numpy as jnp
import numpy as np


def tanh_mlp_params(key, sizes=(1, 5, 5, 1), dtype=jnp.float64):
  """{"hidden_i": {"w", "b"}, "head": {...}}: smooth, so finite differences hold."""
  params = {}
  keys = jax.random.split(key, len(sizes) - 1)
  for i, (k, (n_in, n_out)) in enumerate(zip(keys, zip(sizes[:-1], sizes[1:]))):
    name = "head" if i == len(sizes) - 2 else f"hidden_{i}"
    kw, kb = jax.random.split(k)
    params[name] = {"w": jax.random.normal(kw, (n_in, n_out), dtype) / np.sqrt(n_in),
                    "b": 0.1 * jax.random.normal(kb, (n_out,), dtype)}
  return params


def tanh_mlp_loss(params, batch):
  x, y = batch
  names = sorted(k for k in params if k != "head") + ["head"]
  h = x
  for name in names:
    h = h @ params[name]["w"] + params[name]["b"]
    if name != "head":
      h = jnp.tanh(h)
  return jnp.mean((h - y) ** 2)


def linear_loss(w, batch):
  """Squared loss of a linear model: (1/n) ||X w - y||^2."""
  X, y = batch
  return jnp.mean((X @ w - y) ** 2)


def random_task(key, n_support=6, n_query=7, dim=1, dtype=jnp.float64):
  ks = jax.random.split(key, 4)
  return {"support": (jax.random.normal(ks[0], (n_support, dim), dtype),
                      jax.random.normal(ks[1], (n_support, 1), dtype)),
          "query": (jax.random.normal(ks[2], (n_query, dim), dtype),
                    jax.random.normal(ks[3], (n_query, 1), dtype))}


def central_fd_grad(f, x_flat, eps=1e-6):
  """Central finite differences of scalar f at a float64 vector."""
  x = np.asarray(x_flat, np.float64)
  g = np.zeros_like(x)
  for i in range(x.size):
    e = np.zeros_like(x)
    e[i] = eps
    g[i] = (float(f(x + e)) - float(f(x - e))) / (2 * eps)
  return g
