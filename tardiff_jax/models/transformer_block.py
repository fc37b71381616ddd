"""The reference code's attention site: an LDM "spatial transformer" over time (Rombach et al.
2022, "High-Resolution Image Synthesis with Latent Diffusion Models", as adapted to 1D in the
TarDiff authors' code, devin-21/TarDiff `ldm/modules/attention.py`: `Spatial1DTransformer`,
`BasicTransformerBlock`, `CrossAttention`, `FeedForward(glu=True)`).

`SpatialTransformer1D` on `x: float32[B, T, C]`:

    h = proj_in(GroupNorm(x))                          1x1 projection, C -> heads * dim_head
    depth x:  h = h + attn1(LayerNorm(h))              self-attention
              h = h + attn2(LayerNorm(h), context)     attends to `context`, or to h when None
              h = h + W2 GEGLU(W1 LayerNorm(h))        feed-forward, hidden 4 * width
    out = x + proj_out(h)                              proj_out zero-initialised (identity at init)

As the reference: q/k/v projections have no bias, the output projections have one; scores are
scaled by dim_head^-1/2; GEGLU is `a * gelu(g)` with the exact (erf) GELU; LayerNorm eps 1e-5
(PyTorch's default) and the block's GroupNorm eps 1e-6 (the reference's `Normalize`). One
difference: the reference's `CrossAttention` projects k and v from the *query* width whatever
its `context_dim` (so only a context as wide as the block can be fed); here k and v project from
the context's own width, which is the same thing when the context is None.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

_LN_EPS = 1e-5  # torch.nn.LayerNorm's default.
_GN_EPS = 1e-6  # The reference's `Normalize` (the ResBlocks' GroupNorm32 keeps 1e-5).


class Attention(nn.Module):
  """Multi-head attention of `x: [B, T, D]` to `context: [B, S, E]` (to `x` itself when None):
  the reference's `CrossAttention` (bias-free q/k/v, biased output projection to D)."""

  heads: int
  dim_head: int

  @nn.compact
  def __call__(self, x: Array, context: Array | None = None) -> Array:
    context = x if context is None else context
    inner = self.heads * self.dim_head
    q = nn.Dense(inner, use_bias=False, name="to_q")(x)
    k = nn.Dense(inner, use_bias=False, name="to_k")(context)
    v = nn.Dense(inner, use_bias=False, name="to_v")(context)
    q, k, v = (a.reshape(*a.shape[:2], self.heads, self.dim_head) for a in (q, k, v))
    logits = jnp.einsum("bthd,bshd->bhts", q, k) * (self.dim_head ** -0.5)
    weights = jax.nn.softmax(logits, axis=-1)
    h = jnp.einsum("bhts,bshd->bthd", weights, v).reshape(*x.shape[:2], inner)
    return nn.Dense(x.shape[-1], name="to_out")(h)


class GEGLUFeedForward(nn.Module):
  """`W2 (a * gelu(g))` with `[a | g] = W1 x`, hidden width `mult * D` (the reference's
  `FeedForward(dim, glu=True)`)."""

  mult: int = 4

  @nn.compact
  def __call__(self, x: Array) -> Array:
    d = x.shape[-1]
    a, g = jnp.split(nn.Dense(2 * self.mult * d, name="proj")(x), 2, axis=-1)
    return nn.Dense(d, name="out")(a * nn.gelu(g, approximate=False))


class TransformerBlock(nn.Module):
  """Pre-LayerNorm self-attention, second attention (to the context) and GEGLU MLP, each with a
  residual (the reference's `BasicTransformerBlock`)."""

  heads: int
  dim_head: int

  @nn.compact
  def __call__(self, x: Array, context: Array | None = None) -> Array:
    x = x + Attention(self.heads, self.dim_head, name="attn1")(
        nn.LayerNorm(epsilon=_LN_EPS, name="norm1")(x))
    x = x + Attention(self.heads, self.dim_head, name="attn2")(
        nn.LayerNorm(epsilon=_LN_EPS, name="norm2")(x), context)
    return x + GEGLUFeedForward(name="ff")(nn.LayerNorm(epsilon=_LN_EPS, name="norm3")(x))


class SpatialTransformer1D(nn.Module):
  """GroupNorm, 1x1 projection in, `depth` transformer blocks, zero-initialised 1x1 projection
  out, residual: `x[B, T, C] -> [B, T, C]` (the reference's `Spatial1DTransformer`, with
  heads * dim_head = C as its config gives: dim_head = C // num_heads)."""

  num_heads: int
  depth: int = 1
  norm_groups: int = 32

  @nn.compact
  def __call__(self, x: Array, context: Array | None = None) -> Array:
    c = x.shape[-1]
    if c % self.num_heads:
      raise ValueError(f"SpatialTransformer1D: num_heads={self.num_heads} does not divide the "
                       f"width {c}.")
    h = nn.GroupNorm(num_groups=math.gcd(self.norm_groups, c), epsilon=_GN_EPS, name="norm")(x)
    h = nn.Dense(c, name="proj_in")(h)  # A 1x1 convolution over time.
    for i in range(self.depth):
      h = TransformerBlock(self.num_heads, c // self.num_heads, name=f"block_{i}")(h, context)
    h = nn.Dense(c, kernel_init=nn.initializers.zeros, name="proj_out")(h)
    return x + h


__all__: Sequence[str] = ("Attention", "GEGLUFeedForward", "SpatialTransformer1D",
                          "TransformerBlock")
