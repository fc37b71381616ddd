"""Per-class statistics of per-example parameter-gradient norms (paper Table 3).

For each example, ||grad_phi l(x_i, y_i; phi)||_2 over ALL parameters (the global l2 norm of the
gradient pytree), computed in fixed-size jitted batches with `jax.vmap(jax.grad(loss_fn))`; the
full per-example gradients never leave the device, only their norms.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tardiff_jax.data.dataset import check_series

PyTree = Any


def per_example_grad_norms(loss_fn: Callable[..., jax.Array], params: PyTree, x, y,
                           batch_size: int = 256) -> np.ndarray:
  """||grad_params loss_fn(params, x_i, y_i)||_2 for each example.

  Args:
    loss_fn: per-example loss `(params, x[T, C], y[]) -> scalar`.
    params: the parameter pytree.
    x: float32[N, T, C]; y: int[N].
    batch_size: examples per vmapped batch (the last batch is padded; one compile).
  Returns:
    float64[N] gradient norms (numpy).
  """
  x, y = check_series(x, y, what="grad norms: x")
  if int(batch_size) < 1:
    raise ValueError(f"grad norms: batch_size must be >= 1, got {batch_size}.")
  n = x.shape[0]
  b = min(int(batch_size), n)
  pad = (-n) % b
  if pad:  # Pad with copies of the first examples; their norms are dropped.
    x = np.concatenate([x, np.repeat(x[:1], pad, axis=0)])
    y = np.concatenate([y, np.repeat(y[:1], pad, axis=0)])

  def norm_one(p, xi, yi):
    g = jax.grad(loss_fn)(p, xi, yi)
    return jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree_util.tree_leaves(g)))

  fn = jax.jit(jax.vmap(norm_one, in_axes=(None, 0, 0)))
  out = [np.asarray(fn(params, jnp.asarray(x[i:i + b]), jnp.asarray(y[i:i + b])))
         for i in range(0, x.shape[0], b)]
  return np.concatenate(out)[:n].astype(np.float64)


def grad_norm_stats(loss_fn: Callable[..., jax.Array], params: PyTree, x, y,
                    batch_size: int = 256) -> dict[str, dict[str, float]]:
  """Mean and std of per-example gradient norms per class: {"0": {"mean", "std", "count"}, ...}.

  Class keys are the label values as strings (JSON keys); std is the population std (ddof=0).
  """
  norms = per_example_grad_norms(loss_fn, params, x, y, batch_size)
  y = np.asarray(y)
  return {str(int(k)): {"mean": float(norms[y == k].mean()), "std": float(norms[y == k].std()),
                        "count": int(np.sum(y == k))} for k in np.unique(y)}
