"""The orthonormal DCT-II along time: the basis in which the sampler shapes its noise and
recalibrates x0_hat (per channel and time frequency), and in which both are fitted."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array


def dct_matrix(n: int) -> np.ndarray:
  """Orthonormal DCT-II matrix float64[n (frequency), n (time)]; row 0 is the time mean."""
  t = np.arange(n)
  d = np.sqrt(2.0 / n) * np.cos(np.pi * (t[None, :] + 0.5) * t[:, None] / n)
  d[0] /= np.sqrt(2.0)
  return d


def to_freq(x: Array) -> Array:
  """Series [B, T, C] -> orthonormal DCT coefficients [B, C, F] along time (`dct_matrix`)."""
  return jnp.einsum("ft,btc->bcf", jnp.asarray(dct_matrix(x.shape[1]), x.dtype), x)


def from_freq(z: Array) -> Array:
  """The inverse of `to_freq`: coefficients [B, C, F] -> series [B, T, C]."""
  return jnp.einsum("ft,bcf->btc", jnp.asarray(dct_matrix(z.shape[-1]), z.dtype), z)
