"""TimesNet classifier (Time-Series-Library `TimesNet.classification`) with fixed periods.

Layout is time-major, `x: float32[B, T, C]` -> logits `[B, K]`.

Structure (as the Time-Series-Library classifier): token embedding (Conv1d, kernel 3,
circular padding, no bias) + fixed sinusoidal positions, dropout; `e_layers` TimesBlocks, each
followed by one shared LayerNorm (eps 1e-5); head: exact GELU, dropout, multiplication by the
padding mask over time, flatten, linear.

TimesBlock: for each period p the hidden sequence is zero-padded to a multiple of p, folded to a
2-D grid (cycles x phase), passed through Inception(d_model -> d_ff), GELU, Inception(d_ff ->
d_model), unfolded and cropped; the k branches are summed with softmax(amplitude) weights; residual.

Deviation from the library (Wu et al. 2023, Time-Series-Library): the library picks the top-k
periods from each *batch's* spectrum, which gives data-dependent shapes and makes a sample's
output depend on its batch mates. Here the periods are static Python ints fixed at setup from
the training split's mean amplitude spectrum (`timesnet_periods`) and stored with the model, so
the network is jit-compiled, vmappable and batch-independent. The branch weights stay per
sample: the amplitude of the hidden sequence at the frequencies of each period, computed with an
explicit DFT at those frequencies as sqrt(re^2 + im^2 + eps) (finite second derivatives, needed
by influence guidance).

Speed (same maths): for short series (`choose_impl`, e.g. the default T=24) a TimesBlock's k
period branches of both Inception convs are two dense maps over time gathered from the merged
kernels, i.e. two matmuls, instead of XLA convolutions on tiny (cycles x phase) grids (those ran
~10x slower; benchmarks/bench_timesnet_kernels.py). Long series (e.g. eICU's T=288) fold each
branch to its grid and run the convs with a real FFT along the phase axis ("spectral",
`models/grid_conv.py`); "unfold" (row-wise matmuls) is the earlier long-series path, 1.7x
slower at T=288 for 12 models under `vmap`, and XLA's CPU convolution gradients slow down by an
order of magnitude there (benchmarks/bench_long_series.py). The XLA convolution path ("conv") is
kept as the reference. Parameter names and init are unchanged.

A period p collects every frequency f in 1..T//2 with T // f == p (the library's period of f);
its amplitude is the mean over those frequencies (one frequency for the long periods, which is
exactly the library's weight).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from tardiff_jax.models.grid_conv import (
  conv_matrix_indices,
  dense_matrix,
  inception_grid,
  inception_spectral,
  inception_unfold,
)
from tardiff_jax.models.unet1d import conv1d_as_matmul

AMP_EPS = 1e-6  # Inside sqrt(re^2 + im^2 + eps): keeps the 2nd derivative bounded by eps^-1/2.


def timesnet_periods(x_train: np.ndarray, top_k: int) -> tuple[int, ...]:
  """The top-k distinct periods T // f of the training split's mean amplitude spectrum.

  x_train: [N, T, C]. The amplitude |rfft| along time is averaged over examples and channels, the
  DC term is dropped, frequencies are taken in decreasing amplitude and a frequency whose period
  is already taken is skipped (two branches with one period would be the same branch twice).
  Returns static Python ints, in decreasing amplitude order.
  """
  x = np.asarray(x_train, dtype=np.float64)
  if x.ndim != 3:
    raise ValueError(f"timesnet_periods expects x_train [N, T, C], got shape {x.shape}.")
  _, t, _ = x.shape
  available = sorted({t // f for f in range(1, t // 2 + 1)}) if t >= 2 else []
  if top_k < 1 or top_k > len(available):
    raise ValueError(f"timesnet top_k must be in [1, {len(available)}] for T={t} (the number of "
                     f"distinct periods T // f), got {top_k}.")
  amp = np.abs(np.fft.rfft(x, axis=1)).mean(axis=(0, 2))  # [T//2 + 1]
  amp[0] = -np.inf
  order = np.argsort(-amp, kind="stable")
  periods: list[int] = []
  for f in order:
    if f == 0:
      continue
    p = t // int(f)
    if p not in periods:
      periods.append(p)
    if len(periods) == top_k:
      break
  return tuple(int(p) for p in periods)


def period_frequencies(t: int, period: int) -> tuple[int, ...]:
  """Frequencies f in 1..T//2 whose library period T // f equals `period`."""
  freqs = tuple(f for f in range(1, t // 2 + 1) if t // f == period)
  if not freqs:
    raise ValueError(f"Period {period} is not T // f for any frequency 1 <= f <= T//2 with "
                     f"T={t}; use timesnet_periods to choose periods.")
  return freqs


def validate_periods(t: int, periods: Sequence[int]) -> tuple[int, ...]:
  """Checks periods against T (each a T // f, all distinct) and returns them as a tuple."""
  periods = tuple(int(p) for p in periods)
  if not periods:
    raise ValueError("TimesNet needs at least one period (see timesnet_periods).")
  if len(set(periods)) != len(periods):
    raise ValueError(f"TimesNet periods must be distinct, got {periods}.")
  for p in periods:
    period_frequencies(t, p)
  return periods


def _band_dft(t: int, periods: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """DFT rows for the frequencies of each period, and the band-averaging matrix.

  Returns cos [T, F], sin [T, F] and avg [F, k] (avg[:, i] averages the frequencies of period i).
  """
  freqs = [period_frequencies(t, p) for p in periods]
  flat = np.array([f for fs in freqs for f in fs], dtype=np.float64)
  n = np.arange(t, dtype=np.float64)[:, None]
  angle = 2.0 * np.pi * n * flat[None, :] / t
  avg = np.zeros((len(flat), len(periods)))
  j = 0
  for i, fs in enumerate(freqs):
    avg[j:j + len(fs), i] = 1.0 / len(fs)
    j += len(fs)
  return np.cos(angle), np.sin(angle), avg


def period_amplitudes(h: Float[Array, "T D"], periods: Sequence[int],
                      eps: float = AMP_EPS) -> Float[Array, " k"]:
  """Per-period amplitude of one hidden sequence: mean over channels and over the period's
  frequencies of sqrt(re^2 + im^2 + eps) of the DFT along time. h: [T, D] -> [k]."""
  t = h.shape[0]
  cos, sin, avg = _band_dft(t, periods)
  re = jnp.einsum("td,tf->fd", h, jnp.asarray(cos, h.dtype))
  im = jnp.einsum("td,tf->fd", h, jnp.asarray(sin, h.dtype))
  amp = jnp.sqrt(re * re + im * im + eps).mean(axis=-1)  # [F]
  return amp @ jnp.asarray(avg, h.dtype)


def sinusoidal_positions(t: int, d_model: int) -> np.ndarray:
  """Time-Series-Library `PositionalEmbedding`: [T, d_model] sin on even, cos on odd channels."""
  pos = np.arange(t, dtype=np.float64)[:, None]
  div = np.exp(np.arange(0, d_model, 2, dtype=np.float64) * -(math.log(10000.0) / d_model))
  pe = np.zeros((t, d_model))
  pe[:, 0::2] = np.sin(pos * div)
  pe[:, 1::2] = np.cos(pos * div)
  return pe


class InceptionBlock(nn.Module):
  """Inception_Block_V1: mean of `num_kernels` 'same' 2-D convs of sizes 1, 3, 5, ... (with bias).

  Convolution is linear, so the mean of the convs equals one conv with the mean of the kernels
  zero-padded to the largest size (`merged`). `__call__` applies that conv to a (cycles x phase)
  grid with the kernel cropped to what the grid can reach (rows/cols at offset >= grid size only
  ever see zero padding): exact, and cheaper than the library's separate convs. TimesBlock uses
  `merged` directly (see `conv_matrix_indices`). x: [B, H, W, in_channels] -> [B, H, W, out].
  """

  in_channels: int
  out_channels: int
  num_kernels: int

  def setup(self):
    # Kaiming normal, fan_out, ReLU gain (the library's init), bias 0.
    init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
    kernels, biases = [], []
    for i in range(self.num_kernels):  # kernel_i, bias_i order: the same init as before
      kernels.append(self.param(f"conv_{i}_kernel", init,
                                (2 * i + 1, 2 * i + 1, self.in_channels, self.out_channels)))
      biases.append(self.param(f"conv_{i}_bias", nn.initializers.zeros, (self.out_channels,)))
    self.kernels, self.biases = kernels, biases

  def merged(self) -> tuple[Array, Array]:
    """The averaged kernel [2n-1, 2n-1, in, out] (each zero-padded to 2n-1) and bias [out]."""
    n = self.num_kernels
    kernel = 0.0
    for i, k in enumerate(self.kernels):
      pad = n - 1 - i
      kernel = kernel + jnp.pad(k, ((pad, pad), (pad, pad), (0, 0), (0, 0)))
    return kernel / n, sum(self.biases) / n

  def __call__(self, x: Float[Array, "B H W Cin"]) -> Float[Array, "B H W Cout"]:
    kernel, bias = self.merged()
    return inception_grid(x, kernel, bias)


class LayerNorm(nn.Module):
  """LayerNorm over the last axis computed in the input's dtype (float64 checks need that)."""

  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: Array) -> Array:
    d = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (d,)).astype(x.dtype)
    bias = self.param("bias", nn.initializers.zeros, (d,)).astype(x.dtype)
    mean = x.mean(axis=-1, keepdims=True)
    var = jnp.square(x - mean).mean(axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias


def choose_impl(t: int, periods: Sequence[int], d_model: int, d_ff: int, num_kernels: int,
                max_dense: int = 1 << 24, conv_cost: float = 3.0) -> str:
  """"dense" when the dense time map's multiply-adds are at most `conv_cost` times those of the
  cropped-kernel grid convs (XLA's CPU conv on these tiny grids ran ~3x slower per flop than the
  matmul: benchmarks/bench_timesnet_kernels.py) and each of its two matrices
  (T * sum L_p * d_model * d_ff floats) is at most `max_dense`; "spectral" otherwise (long
  series, e.g. T=288: the grid convs by an FFT along the phase axis, `inception_spectral`).
  "unfold" (row-wise matmuls) and "conv" (the XLA convolution) are never chosen: they are kept
  as references the others are tested against."""
  pairs, taps = 0, 0
  for p in periods:
    length = -(-t // p) * p
    h = length // p
    r = num_kernels - 1
    pairs += t * length
    taps += length * (2 * min(r, h - 1) + 1) * (2 * min(r, p - 1) + 1)
  dense_ok = pairs * d_model * d_ff <= max_dense
  return "dense" if dense_ok and pairs <= conv_cost * taps else "spectral"


IMPLS = ("auto", "dense", "spectral", "unfold", "conv")
MATMUL_EMBEDDING = ("spectral", "unfold")  # paths whose token embedding is one matmul


class TimesBlock(nn.Module):
  """One TimesBlock with fixed periods. x: [B, T, D] -> [B, T, D].

  impl "dense" (T small, the default's T=24): the k branches' two Inception convs are two dense
  maps over time built from the merged kernels (`conv_matrix_indices`), so the block is two
  matmuls [B, T*D] x [T*D, sum L_p * d_ff] and [B, sum L_p * d_ff] x [sum L_p * d_ff, T*D] with
  the softmax branch weights applied in between (the second conv is linear, and the weights sum
  to one, so the bias is added once). "spectral" (long series) folds each branch to its
  (cycles x phase) grid and computes the Inception convs by an FFT along the phase axis
  (`inception_spectral`); "unfold" as row-wise matmuls (`inception_unfold`). "conv" folds
  the same grids and runs XLA convolutions: the reference implementation, same maths, but its
  gradients are very slow on CPU under `lax.scan`/`vmap`.
  """

  d_ff: int
  num_kernels: int
  periods: tuple[int, ...]
  amp_eps: float = AMP_EPS
  impl: str = "auto"

  @nn.compact
  def __call__(self, x: Float[Array, "B T D"]) -> Float[Array, "B T D"]:
    b, t, d = x.shape
    inc1 = InceptionBlock(d, self.d_ff, self.num_kernels, name="inception_in")
    inc2 = InceptionBlock(self.d_ff, d, self.num_kernels, name="inception_out")
    amp = jax.vmap(lambda h: period_amplitudes(h, self.periods, self.amp_eps))(x)  # [B, k]
    weight = jax.nn.softmax(amp, axis=-1)
    impl = self.impl
    if impl not in IMPLS:
      raise ValueError(f"TimesNet impl must be one of {IMPLS}, got {impl!r}.")
    if impl == "auto":
      impl = choose_impl(t, self.periods, d, self.d_ff, self.num_kernels)
    if impl == "dense":
      k1, b1 = inc1.merged()
      k2, b2 = inc2.merged()
      r = self.num_kernels - 1
      w1 = dense_matrix(k1.astype(x.dtype), conv_matrix_indices(t, self.periods, r, False))
      w2 = dense_matrix(k2.astype(x.dtype), conv_matrix_indices(t, self.periods, r, True))
      h = jnp.einsum("bud,usdf->bsf", x, w1) + b1.astype(x.dtype)  # [B, sum L, d_ff]
      h = nn.gelu(h, approximate=False)
      lengths = [-(-t // p) * p for p in self.periods]
      cell_branch = np.repeat(np.arange(len(self.periods)), lengths)  # [sum L]
      h = h * weight[:, cell_branch, None]
      return jnp.einsum("bsf,stfd->btd", h, w2) + b2.astype(x.dtype) + x
    if impl in MATMUL_EMBEDDING:
      k1, b1 = inc1.merged()
      k2, b2 = inc2.merged()
      grid_conv = inception_spectral if impl == "spectral" else inception_unfold
      conv1 = lambda g: grid_conv(g, k1, b1)  # noqa: E731
      conv2 = lambda g: grid_conv(g, k2, b2)  # noqa: E731
    else:  # Flax shares parameters across calls of one submodule, as the library shares its
      conv1, conv2 = inc1, inc2  # `self.conv` across the k periods.
    branches = []
    for p in self.periods:
      length = -(-t // p) * p
      out = jnp.pad(x, ((0, 0), (0, length - t), (0, 0))) if length != t else x
      out = out.reshape(b, length // p, p, d)  # cycles x phase
      out = conv2(nn.gelu(conv1(out), approximate=False))
      branches.append(out.reshape(b, length, d)[:, :t])
    res = jnp.stack(branches, axis=-1)  # [B, T, D, k]
    return jnp.einsum("btdk,bk->btd", res, weight) + x


class TokenEmbedding(nn.Module):
  """Conv1d(C, d_model, kernel 3, circular padding, no bias), kaiming fan_in init, as the library.

  The parameter is `kernel` [3, C, d_model], the same name, shape and init as `nn.Conv`'s.
  as_matmul=False runs the XLA convolution; True stacks the three shifted copies of x on the
  channel axis and does one matmul [B, T, 3C] x [3C, d_model] (same maths; the long-series path,
  whose conv gradients are slow on CPU). x: [B, T, C] -> [B, T, d_model].
  """

  d_model: int
  as_matmul: bool = False

  @nn.compact
  def __call__(self, x: Float[Array, "B T C"]) -> Float[Array, "B T D"]:
    c = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.variance_scaling(2.0, "fan_in", "normal"),
                        (3, c, self.d_model)).astype(x.dtype)
    xp = jnp.concatenate([x[:, -1:], x, x[:, :1]], axis=1)  # circular padding
    if self.as_matmul:
      return conv1d_as_matmul(xp, kernel)
    return jax.lax.conv_general_dilated(xp, kernel, window_strides=(1,), padding="VALID",
                                        dimension_numbers=("NWC", "WIO", "NWC"))


class TimesNet(nn.Module):
  """TimesNet classifier with fixed periods. x: [B, T, C] -> logits [B, num_outputs].

  `mask` ([B, T], 1 = valid step) multiplies the features before the head, as the library's
  padding mask; None means all steps valid. Dropout (rng stream "dropout") only when train=True.
  """

  num_outputs: int
  periods: tuple[int, ...]
  d_model: int = 32
  d_ff: int = 64
  e_layers: int = 2
  num_kernels: int = 6
  dropout: float = 0.1
  amp_eps: float = AMP_EPS
  impl: str = "auto"  # TimesBlock maths: "auto" (choose_impl) or one of IMPLS (same maths).

  @nn.compact
  def __call__(self, x: Float[Array, "B T C"], mask: Float[Array, "B T"] | None = None,
               train: bool = False) -> Float[Array, "B K"]:
    if x.ndim != 3:
      raise ValueError(f"TimesNet expects x [B, T, C], got shape {x.shape}.")
    if self.d_model % 2:
      raise ValueError(f"timesnet.d_model must be even (sinusoidal positions), got {self.d_model}.")
    b, t, _ = x.shape
    validate_periods(t, self.periods)
    # Token embedding: Conv1d(C, d_model, 3, circular padding, no bias), kaiming fan_in init.
    impl = self.impl
    if impl == "auto":
      impl = choose_impl(t, self.periods, self.d_model, self.d_ff, self.num_kernels)
    h = TokenEmbedding(self.d_model, as_matmul=impl in MATMUL_EMBEDDING, name="token_embedding")(x)
    h = h + jnp.asarray(sinusoidal_positions(t, self.d_model), h.dtype)
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    norm = LayerNorm(epsilon=1e-5, name="layer_norm")  # shared by all blocks
    for i in range(self.e_layers):
      h = norm(TimesBlock(self.d_ff, self.num_kernels, tuple(self.periods), self.amp_eps,
                          impl, name=f"block_{i}")(h))
    h = nn.gelu(h, approximate=False)
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    if mask is not None:
      h = h * mask.astype(h.dtype)[:, :, None]
    return nn.Dense(self.num_outputs, name="projection")(h.reshape(b, -1))
