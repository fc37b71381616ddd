"""GRUs: the bidirectional GRU classifier (the reference code's guidance model) and the small
unidirectional GRU of the fidelity scores (`SequenceGRU`).

Layout is time-major, `x: float32[B, T, C]` -> logits `[B, K]`.

`num_layers` stacked bidirectional GRU layers (PyTorch `nn.GRU(bidirectional=True,
batch_first=True)` equations and init), then the last-step representation, PyTorch's
`out[:, -1, :]`: the concatenation of the forward direction's output at the last step and the
backward direction's output at the last step (its first step), then one linear layer.

Implementation: per layer the input projections of all steps are one matmul; one `lax.scan`
runs both directions at once (carry [2, B, H]). In the last layer only `out[:, -1]` is used, and
the backward direction's output there is its first step, so that direction runs one step, not T
(exact, and about a quarter less compute than the reference).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


def _uniform(scale: float):
  """PyTorch's GRU init: U(-1/sqrt(H), 1/sqrt(H)) for every weight and bias."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)
  return init


def _gru_gates(xw: Array, hw: Array, h: Array) -> Array:
  """PyTorch GRU update from input and recurrent projections [.., 3H] (order r, z, n)."""
  xr, xz, xn = jnp.split(xw, 3, axis=-1)
  hr, hz, hn = jnp.split(hw, 3, axis=-1)
  r = jax.nn.sigmoid(xr + hr)
  z = jax.nn.sigmoid(xz + hz)
  n = jnp.tanh(xn + r * hn)
  return (1.0 - z) * n + z * h


class BiGRULayer(nn.Module):
  """One bidirectional GRU layer. x: [B, T, Din] -> [B, T, 2H] (forward, backward).

  With `last_only`, returns [B, 2H]: the forward output at T-1 and the backward output at T-1.
  """

  hidden: int
  last_only: bool = False

  @nn.compact
  def __call__(self, x: Float[Array, "B T D"]) -> Array:
    b, t, d = x.shape
    hid = self.hidden
    init = _uniform(1.0 / hid ** 0.5)
    # Direction axis first: 0 = forward, 1 = backward.
    w_i = self.param("w_ih", init, (2, d, 3 * hid))
    w_h = self.param("w_hh", init, (2, hid, 3 * hid))
    b_i = self.param("b_ih", init, (2, 3 * hid))
    b_h = self.param("b_hh", init, (2, 3 * hid))
    w_i, w_h, b_i, b_h = (a.astype(x.dtype) for a in (w_i, w_h, b_i, b_h))
    h0 = jnp.zeros((b, hid), x.dtype)

    if self.last_only:
      xw_f = jnp.einsum("btd,dg->tbg", x, w_i[0]) + b_i[0]  # [T, B, 3H]

      def step(h, xw):
        h = _gru_gates(xw, h @ w_h[0] + b_h[0], h)
        return h, None

      h_f, _ = jax.lax.scan(step, h0, xw_f)
      # Backward direction's first step, from h0 = 0, on x[:, T-1].
      xw_b = x[:, -1] @ w_i[1] + b_i[1]
      h_b = _gru_gates(xw_b, jnp.zeros_like(xw_b) + b_h[1], h0)
      return jnp.concatenate([h_f, h_b], axis=-1)

    xw = jnp.einsum("btd,edg->etbg", x, w_i) + b_i[:, None, None, :]  # [2, T, B, 3H]
    xw = jnp.stack([xw[0], xw[1, ::-1]], axis=1)  # [T, 2, B, 3H]; backward reads reversed time

    def step2(h, xw_t):
      hw = jnp.einsum("ebh,ehg->ebg", h, w_h) + b_h[:, None, :]
      h = _gru_gates(xw_t, hw, h)
      return h, h

    _, hs = jax.lax.scan(step2, jnp.stack([h0, h0]), xw)  # [T, 2, B, H]
    out_f = hs[:, 0]
    out_b = hs[::-1, 1]
    return jnp.transpose(jnp.concatenate([out_f, out_b], axis=-1), (1, 0, 2))


class GRUClassifier(nn.Module):
  """Stacked bidirectional GRU + last-step linear head. x: [B, T, C] -> logits [B, num_outputs].

  `mask` and `train` are accepted for a common interface with TimesNet; the GRU has no dropout
  (as the reference) and ignores the mask (fixed-length series, missing values filled upstream).
  """

  num_outputs: int
  hidden: int = 64
  num_layers: int = 2

  @nn.compact
  def __call__(self, x: Float[Array, "B T C"], mask: Array | None = None,
               train: bool = False) -> Float[Array, "B K"]:
    del mask, train
    if x.ndim != 3:
      raise ValueError(f"GRUClassifier expects x [B, T, C], got shape {x.shape}.")
    h = x
    for i in range(self.num_layers):
      h = BiGRULayer(self.hidden, last_only=i == self.num_layers - 1, name=f"gru_{i}")(h)
    fan_in = 2 * self.hidden
    init = _uniform(1.0 / fan_in ** 0.5)  # PyTorch nn.Linear-like
    return nn.Dense(self.num_outputs, kernel_init=init, bias_init=init, name="head")(h)


class SequenceGRU(nn.Module):
  """1-layer unidirectional GRU (`nn.GRUCell`) + linear head, for the fidelity scores.
  x: [B, T, C] -> [B] (a score from the last state) or [B, T] (one output per step)."""
  hidden: int
  per_step: bool = False

  @nn.compact
  def __call__(self, x: Float[Array, "B T C"]) -> Array:
    h = nn.RNN(nn.GRUCell(features=self.hidden))(x)  # [B, T, H]
    if not self.per_step:
      h = h[:, -1]
    return nn.Dense(1)(h)[..., 0]
