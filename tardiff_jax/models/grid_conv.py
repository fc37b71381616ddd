"""TimesNet's Inception convolution on a (cycles x phase) grid, four ways with the same maths.

A TimesBlock folds each period's hidden sequence to a grid and applies a 'same' 2-D conv with the
merged Inception kernel (the mean of the 1, 3, 5, ... kernels, zero-padded to the largest). The
kernel is cropped to the offsets the grid can reach (rows/cols at offset >= the grid size only
ever see zero padding). The functions here take the grid [B, H, W, Cin], the merged kernel
[K, K, Cin, Cout] (K odd) and the bias, and return [B, H, W, Cout]:

* `inception_grid`: XLA convolution, the reference the others are tested against;
* `inception_unfold`: row-wise matmuls over unfolded column shifts;
* `inception_spectral`: a real FFT along the phase axis, kernel rows as taps across cycles
  (the long-series path: fewer multiply-adds and far less data movement, see its docstring);
* `conv_matrix_indices` + `dense_matrix`: all periods' convs as one dense map over time (short
  series).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float


def _crop(kernel: Array, h: int, w: int, dtype) -> tuple[Array, int, int]:
  """The merged (square) kernel cropped to the offsets an h x w grid can reach, and its reaches
  (ry, rx)."""
  c = kernel.shape[0] // 2
  ry, rx = min(c, h - 1), min(c, w - 1)
  return kernel[c - ry:c + ry + 1, c - rx:c + rx + 1].astype(dtype), ry, rx


def fft_size(n: int) -> int:
  """The smallest integer >= n whose prime factors are 2, 3 and 5 (fast FFT lengths)."""
  while True:
    m = n
    for p in (2, 3, 5):
      while m % p == 0:
        m //= p
    if m == 1:
      return n
    n += 1


def inception_grid(x: Float[Array, "B H W Cin"], kernel: Float[Array, "K K Cin Cout"],
                   bias: Float[Array, " Cout"]) -> Float[Array, "B H W Cout"]:
  """'Same' 2-D conv (XLA convolution) of a (cycles x phase) grid with a merged odd kernel,
  cropped to the offsets the grid can reach."""
  _, h, w, _ = x.shape
  kernel, ry, rx = _crop(kernel, h, w, x.dtype)
  y = jax.lax.conv_general_dilated(
      x, kernel, window_strides=(1, 1), padding=((ry, ry), (rx, rx)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y + bias.astype(x.dtype)


def inception_unfold(x: Float[Array, "B H W Cin"], kernel: Float[Array, "K K Cin Cout"],
                     bias: Float[Array, " Cout"]) -> Float[Array, "B H W Cout"]:
  """The same 'same' 2-D conv as `inception_grid`, as matmuls (no XLA convolution).

  The grid is padded by the cropped kernel's reach, the (2rx+1) column shifts are unfolded into
  the channel axis ([B, H + 2ry, W, (2rx+1) Cin]) and each of the (2ry+1) kernel rows is one
  matmul of a row-shifted slice with that row's kernel [(2rx+1) Cin, Cout], accumulated. Same
  multiply-adds as the conv, (2rx+1)x the input's memory. On XLA's CPU backend the gradients of
  small-grid convolutions are pathologically slow inside `lax.scan` and under `vmap` over models
  (benchmarks/bench_long_series.py); these matmuls are not.
  """
  _, h, w, cin = x.shape
  kernel, ry, rx = _crop(kernel, h, w, x.dtype)
  cout = kernel.shape[-1]
  xp = jnp.pad(x, ((0, 0), (ry, ry), (rx, rx), (0, 0)))
  cols = jnp.concatenate([xp[:, :, j:j + w] for j in range(2 * rx + 1)], axis=-1)
  y = None
  for i in range(2 * ry + 1):
    term = jnp.einsum("bhwc,co->bhwo", cols[:, i:i + h],
                      kernel[i].reshape((2 * rx + 1) * cin, cout))
    y = term if y is None else y + term
  return y + bias.astype(x.dtype)


def inception_spectral(x: Float[Array, "B H W Cin"], kernel: Float[Array, "K K Cin Cout"],
                       bias: Float[Array, " Cout"]) -> Float[Array, "B H W Cout"]:
  """The same 'same' 2-D conv, by a real FFT along the phase axis (W).

  With the kernel cropped to reaches (ry, rx), each grid row is zero-padded along W to
  M = fft_size(W + rx) (enough: a cross-correlation only wraps indices -rx..-1 onto the padding)
  and transformed; row h of the output is then, per frequency, sum over the (2ry+1) kernel rows i
  of the transformed input row h + i - ry (zero outside the grid) times the transformed kernel
  row i: one complex matmul per frequency with the row shifts stacked on the channel axis
  ([(2ry+1) Cin] -> [Cout]); the inverse FFT is cropped to W. Multiply-adds per output cell
  ~ 4 (2ry+1) (M/2+1)/W Cin Cout against (2ry+1)(2rx+1) Cin Cout direct, and the (2rx+1)x
  unfolded copy of the input is never made. A single-row grid (one cycle: the conv is a 1-D conv
  along W) is cheaper as one unfolded matmul (`inception_unfold`, measured), and so is a kernel
  of width 1. Equal to `inception_grid` to float rounding (tests/test_timesnet.py).
  """
  _, h, w, cin = x.shape
  if h == 1 or kernel.shape[1] == 1:
    return inception_unfold(x, kernel, bias)
  kernel, ry, rx = _crop(kernel, h, w, x.dtype)
  m = fft_size(w + rx)
  xf = jnp.fft.rfft(jnp.transpose(x, (0, 3, 1, 2)), n=m)  # [B, Cin, H, F]
  xf = jnp.pad(xf, ((0, 0), (0, 0), (ry, ry), (0, 0)))  # zero rows transform to zero rows
  xs = jnp.concatenate([xf[:, :, i:i + h] for i in range(2 * ry + 1)], axis=1)
  # Kernel row i as a length-M filter g with g[-j mod M] = K[i, rx + j]: a circular convolution
  # with g is the cross-correlation with K's row.
  g = jnp.zeros((2 * ry + 1, m) + kernel.shape[2:], x.dtype)
  g = jnp.roll(g.at[:, :2 * rx + 1].set(jnp.flip(kernel, 1)), -rx, axis=1)
  gf = jnp.fft.rfft(jnp.transpose(g, (0, 2, 3, 1)), axis=-1)  # [rows, Cin, Cout, F]
  yf = jnp.einsum("bchf,cof->bohf", xs, gf.reshape((2 * ry + 1) * cin, *gf.shape[2:]))
  y = jnp.fft.irfft(yf, n=m)[..., :w]  # [B, Cout, H, W]
  return jnp.transpose(y, (0, 2, 3, 1)) + bias.astype(x.dtype)


def conv_matrix_indices(t: int, periods: Sequence[int], reach: int,
                        transpose: bool) -> np.ndarray:
  """Flat kernel indices that turn the grid convs of all periods into one dense time map.

  For period p the sequence (zero-padded to L_p = ceil(T/p) * p) is the grid (L_p/p x p) with
  step s at cell (s // p, s % p); a 'same' conv with a (2r+1)^2 kernel K (cross-correlation)
  gives out[s] = sum_u K[r + u//p - s//p, r + u%p - s%p] in[u], zero outside the kernel.
  transpose=False (first Inception): rows u = the T real input steps (padded steps are zero),
  columns s = the L_p grid cells of each period, concatenated -> [T, sum L_p].
  transpose=True (second Inception): rows u = the sum L_p grid cells, columns s = the T kept
  output steps of the same period (the crop) -> [sum L_p, T]; cells of other periods' blocks
  never mix (the row block of period p only feeds period p's outputs, see TimesBlock).
  Entries index K.reshape(-1) of a kernel with one extra zero row appended (index (2r+1)^2).
  """
  size = 2 * reach + 1
  blocks = []
  for p in periods:
    length = -(-t // p) * p
    a = np.arange(t)[:, None]  # real steps
    s = np.arange(length)[None, :]  # grid cells
    if transpose:  # in = cell s, out = step a
      dy, dx = s // p - a // p, s % p - a % p
    else:  # in = step a, out = cell s
      dy, dx = a // p - s // p, a % p - s % p
    ok = (np.abs(dy) <= reach) & (np.abs(dx) <= reach)
    blocks.append(np.where(ok, (dy + reach) * size + (dx + reach), size * size))
  idx = np.concatenate(blocks, axis=1)  # [T, sum L]
  return idx.T if transpose else idx


def dense_matrix(kernel: Array, idx: np.ndarray) -> Array:
  """Gathers the dense map [rows, cols, Cin, Cout] of `conv_matrix_indices` from a merged kernel."""
  k2 = kernel.reshape(-1, *kernel.shape[2:])
  k2 = jnp.concatenate([k2, jnp.zeros((1, *k2.shape[1:]), k2.dtype)], axis=0)
  return k2[jnp.asarray(idx)]
