"""TimesNet classifier (Time-Series-Library `TimesNet.classification`) with fixed periods.

Layout is time-major, `x: float32[B, T, C]` -> logits `[B, K]`.

Structure (as the Time-Series-Library classifier, SPECS 5): token embedding (Conv1d, kernel 3,
circular padding, no bias) + fixed sinusoidal positions, dropout; `e_layers` TimesBlocks, each
followed by one shared LayerNorm (eps 1e-5); head: exact GELU, dropout, multiplication by the
padding mask over time, flatten, linear.

TimesBlock: for each period p the hidden sequence is zero-padded to a multiple of p, folded to a
2-D grid (cycles x phase), passed through Inception(d_model -> d_ff), GELU, Inception(d_ff ->
d_model), unfolded and cropped; the k branches are summed with softmax(amplitude) weights; residual.

Deviation from the library (documented in SPECS 5): the library picks the top-k periods from each
*batch's* spectrum, which gives data-dependent shapes and makes a sample's output depend on its
batch mates. Here the periods are static Python ints fixed at setup from the training split's mean
amplitude spectrum (`timesnet_periods`) and stored with the model, so the network is jit-compiled,
vmappable and batch-independent. The branch weights stay per sample: the amplitude of the hidden
sequence at the frequencies of each period, computed with an explicit DFT at those frequencies as
sqrt(re^2 + im^2 + eps) (finite second derivatives, needed by influence guidance).

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
                      eps: float = AMP_EPS) -> Float[Array, "k"]:
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
  zero-padded to the largest size; that kernel is further cropped to what the (cycles x phase)
  grid can reach (rows/cols at offset >= grid size only ever see zero padding). Exact, and cheaper
  than the library's separate convs. x: [B, H, W, Cin] -> [B, H, W, out_channels].
  """

  out_channels: int
  num_kernels: int

  @nn.compact
  def __call__(self, x: Float[Array, "B H W Cin"]) -> Float[Array, "B H W Cout"]:
    _, h, w, cin = x.shape
    n = self.num_kernels
    big = 2 * n - 1
    # Kaiming normal, fan_out, ReLU gain (the library's init), bias 0.
    init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
    kernel = 0.0
    bias = 0.0
    for i in range(n):
      k = self.param(f"conv_{i}_kernel", init, (2 * i + 1, 2 * i + 1, cin, self.out_channels))
      b = self.param(f"conv_{i}_bias", nn.initializers.zeros, (self.out_channels,))
      pad = n - 1 - i
      kernel = kernel + jnp.pad(k, ((pad, pad), (pad, pad), (0, 0), (0, 0)))
      bias = bias + b
    kernel = kernel / n
    bias = bias / n
    # Crop to the reachable offsets: |dy| <= h - 1, |dx| <= w - 1.
    ry, rx = min(n - 1, h - 1), min(n - 1, w - 1)
    c = big // 2
    kernel = kernel[c - ry:c + ry + 1, c - rx:c + rx + 1]
    y = jax.lax.conv_general_dilated(
        x, kernel.astype(x.dtype), window_strides=(1, 1), padding=((ry, ry), (rx, rx)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias.astype(x.dtype)


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


class TimesBlock(nn.Module):
  """One TimesBlock with fixed periods. x: [B, T, D] -> [B, T, D]."""

  d_ff: int
  num_kernels: int
  periods: tuple[int, ...]
  amp_eps: float = AMP_EPS

  @nn.compact
  def __call__(self, x: Float[Array, "B T D"]) -> Float[Array, "B T D"]:
    b, t, d = x.shape
    inc1 = InceptionBlock(self.d_ff, self.num_kernels, name="inception_in")
    inc2 = InceptionBlock(d, self.num_kernels, name="inception_out")
    branches = []
    for p in self.periods:
      length = -(-t // p) * p
      out = jnp.pad(x, ((0, 0), (0, length - t), (0, 0))) if length != t else x
      out = out.reshape(b, length // p, p, d)  # cycles x phase
      # Flax shares parameters across calls of one submodule, as the library shares its
      # `self.conv` across the k periods.
      out = inc2(nn.gelu(inc1(out), approximate=False))
      branches.append(out.reshape(b, length, d)[:, :t])
    res = jnp.stack(branches, axis=-1)  # [B, T, D, k]
    amp = jax.vmap(lambda h: period_amplitudes(h, self.periods, self.amp_eps))(x)  # [B, k]
    weight = jax.nn.softmax(amp, axis=-1)
    return jnp.einsum("btdk,bk->btd", res, weight) + x


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
    xp = jnp.concatenate([x[:, -1:], x, x[:, :1]], axis=1)
    h = nn.Conv(self.d_model, kernel_size=(3,), padding="VALID", use_bias=False,
                kernel_init=nn.initializers.variance_scaling(2.0, "fan_in", "normal"),
                name="token_embedding")(xp)
    h = h + jnp.asarray(sinusoidal_positions(t, self.d_model), h.dtype)
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    norm = LayerNorm(epsilon=1e-5, name="layer_norm")  # shared by all blocks
    for i in range(self.e_layers):
      h = norm(TimesBlock(self.d_ff, self.num_kernels, tuple(self.periods), self.amp_eps,
                          name=f"block_{i}")(h))
    h = nn.gelu(h, approximate=False)
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    if mask is not None:
      h = h * mask.astype(h.dtype)[:, :, None]
    return nn.Dense(self.num_outputs, name="projection")(h.reshape(b, -1))
