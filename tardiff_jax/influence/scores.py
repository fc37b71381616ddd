"""Influence scores of candidate samples on a guidance set, and their input gradients.

Every function is generic over a per-example downstream loss `loss_fn(params, x[T, C], y[]) ->
scalar` (pure; BCE / cross-entropy of the classifier) and a cached guidance gradient `G` (a
pytree shaped like `params`, see `cache.py`).

Sign convention: for one SGD step of the downstream model on a sample (x, y),
`phi' = phi - eta * grad_phi l(x, y)`, the guidance-set loss changes by `-eta * <grad_phi l(x, y),
G> + O(eta^2)`. A *positive* influence `Delta(x, y) = <grad_phi l(x, y), G>` therefore means that
adding the sample lowers the guidance loss, and guidance with scale `w > 0` moves samples
*up* the influence: the mean shift is `+w * grad_x Delta`.

Variants (score of one sample unless noted):
  dot:        Delta = <grad_phi l(x, y), G>, computed as the directional derivative of l along G
              (`jax.jvp` in parameter space: no per-sample parameter gradient is materialised).
  cosine:     Delta / (||grad_phi l(x, y)|| + eps)   (paper Eq. 20).
  batch:      the reference code's batch-level score < n(grad_phi L_batch(X, Y)), n(G) > with
              L_batch the mean loss over the whole batch and n(v) = v / ||v||; one scalar per
              batch (a sample's pull depends on its batch mates).
  classifier: log p(y | x) = -l(x, y) (classic classifier guidance; exact when l is the
              unweighted cross-entropy / BCE of the classifier).
  none:       0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

LossFn = Callable[[Any, Array, Array], Array]
VARIANTS = ("dot", "cosine", "batch", "classifier", "none")
PER_SAMPLE_VARIANTS = ("dot", "cosine", "classifier", "none")
DEFAULT_EPS = 1e-12


def check_variant(variant: str) -> str:
  """Returns `variant` or raises a ValueError naming the allowed values."""
  if variant not in VARIANTS:
    raise ValueError(f"Unknown influence variant {variant!r}; expected one of {VARIANTS}.")
  return variant


def tree_vdot(a: Any, b: Any) -> Array:
  """<a, b> summed over all leaves of two pytrees with the same structure (float32)."""
  leaves = jax.tree_util.tree_map(
      lambda u, v: jnp.vdot(u.astype(jnp.float32).ravel(), v.astype(jnp.float32).ravel()), a, b)
  return sum(jax.tree_util.tree_leaves(leaves), jnp.zeros((), jnp.float32))


def tree_norm(a: Any) -> Array:
  """Global l2 norm over all leaves of a pytree."""
  return jnp.sqrt(tree_vdot(a, a))


def _sample_score(loss_fn: LossFn, params: Any, G: Any, x: Array, y: Array, variant: str,
                  eps: float) -> Array:
  """Score of one sample x[T, C] with label y[] for a per-sample variant -> scalar."""
  if variant == "dot":
    return jax.jvp(lambda p: loss_fn(p, x, y), (params,), (G,))[1]
  if variant == "cosine":
    g = jax.grad(loss_fn)(params, x, y)
    return tree_vdot(g, G) / (tree_norm(g) + eps)
  if variant == "classifier":
    return -loss_fn(params, x, y)
  if variant == "none":
    return jnp.zeros((), x.dtype)
  raise ValueError(f"Variant {variant!r} is not a per-sample score; expected "
                   f"{PER_SAMPLE_VARIANTS}.")


def batch_score(loss_fn: LossFn, params: Any, G: Any, x: Float[Array, "b t c"],
                y: Int[Array, " b"], eps: float = DEFAULT_EPS) -> Float[Array, ""]:
  """The reference code's batch-level cosine < n(grad_phi mean_i l(x_i, y_i)), n(G) > -> scalar."""
  def batch_loss(p):
    return jnp.mean(jax.vmap(loss_fn, in_axes=(None, 0, 0))(p, x, y))
  g = jax.grad(batch_loss)(params)
  return tree_vdot(g, G) / ((tree_norm(g) + eps) * (tree_norm(G) + eps))


def influence_single(loss_fn: LossFn, params: Any, G: Any, x: Float[Array, "t c"],
                     y: Int[Array, ""], variant: str = "dot",
                     eps: float = DEFAULT_EPS) -> Float[Array, ""]:
  """Influence of one sample x[T, C] (label y[]) for a per-sample variant -> scalar."""
  check_variant(variant)
  return _sample_score(loss_fn, params, G, x, y, variant, eps)


def influence(loss_fn: LossFn, params: Any, G: Any, x: Float[Array, "b t c"],
              y: Int[Array, " b"], variant: str = "dot",
              eps: float = DEFAULT_EPS) -> Float[Array, " b"]:
  """Influence of each sample of a batch x[B, T, C] -> [B] (vmapped over samples).

  For `batch` the score is one number per batch, returned broadcast to [B].
  """
  check_variant(variant)
  if variant == "batch":
    s = batch_score(loss_fn, params, G, x, y, eps)
    return jnp.broadcast_to(s, y.shape)
  return jax.vmap(lambda xi, yi: _sample_score(loss_fn, params, G, xi, yi, variant, eps))(x, y)


def influence_and_input_grad(loss_fn: LossFn, params: Any, G: Any, x: Float[Array, "b t c"],
                             y: Int[Array, " b"], variant: str = "dot",
                             eps: float = DEFAULT_EPS
                             ) -> tuple[Float[Array, " b"], Float[Array, "b t c"]]:
  """(scores[B], grad_x scores [B, T, C]); per sample via vmap, or over the batch for `batch`."""
  check_variant(variant)
  if variant == "batch":
    s, gx = jax.value_and_grad(lambda xb: batch_score(loss_fn, params, G, xb, y, eps))(x)
    return jnp.broadcast_to(s, y.shape), gx
  if variant == "none":
    return jnp.zeros(y.shape, x.dtype), jnp.zeros_like(x)
  vg = jax.value_and_grad(lambda xi, yi: _sample_score(loss_fn, params, G, xi, yi, variant, eps))
  return jax.vmap(vg)(x, y)


def influence_input_grad(loss_fn: LossFn, params: Any, G: Any, x: Float[Array, "b t c"],
                         y: Int[Array, " b"], variant: str = "dot",
                         eps: float = DEFAULT_EPS) -> Float[Array, "b t c"]:
  """grad_x of the influence for each sample of x[B, T, C] -> [B, T, C]."""
  return influence_and_input_grad(loss_fn, params, G, x, y, variant, eps)[1]
