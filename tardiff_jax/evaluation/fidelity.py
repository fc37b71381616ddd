"""Fidelity of synthetic series: discriminative and predictive scores (TimeGAN, Yoon et al.
2019), marginal statistics.

Both scores train small 1-layer GRUs (Flax Linen `nn.RNN(nn.GRUCell)`). The `repeats` of one
score are trained together: one jitted function, `vmap`ped over repeats (params, keys and data
splits), with the optimiser steps in one `lax.scan`. Compiled functions are cached per
(shapes, hyper-parameters), so repeated calls for several methods compile once.

Missing values (NaN) are filled after scaling with the channel's mean (scaled units); pass
imputed/complete series to both arguments so missingness itself is not a give-away.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tardiff_jax.data.dataset import check_series
from tardiff_jax.models.gru import SequenceGRU


def default_hidden(num_channels: int) -> int:
  """Hidden size max(C // 2, 16): TimeGAN's max(C // 2, 4) with a floor of 16.

  With C = 7 TimeGAN's rule gives 4 units, which in a few hundred CPU steps misses differences a
  16-unit GRU finds (e.g. added noise of 0.3 std: score 0.07 vs 0.24 at 600 steps).
  """
  return max(num_channels // 2, 16)


def _check(name: str, x: np.ndarray) -> np.ndarray:
  return check_series(x, what=name, allow_nan=True)


def _check_hparams(repeats: int, steps: int, batch_size: int, learning_rate: float) -> None:
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1; got {repeats}.")
  if steps < 1:
    raise ValueError(f"steps must be >= 1; got {steps}.")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
  if not learning_rate > 0:
    raise ValueError(f"learning_rate must be > 0; got {learning_rate}.")


def _minmax(ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel (lo, range) over `ref` [N, T, C], NaN-aware; a flat channel gets range 1."""
  lo = np.nanmin(ref, axis=(0, 1))
  hi = np.nanmax(ref, axis=(0, 1))
  if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
    raise ValueError("Min-max scaling: a channel has no finite value.")
  rng = np.where(hi > lo, hi - lo, 1.0)
  return lo, rng


def _scale_fill(x: np.ndarray, lo: np.ndarray, rng: np.ndarray) -> np.ndarray:
  z = (x - lo) / rng
  fill = np.nanmean(z, axis=(0, 1))
  fill = np.where(np.isfinite(fill), fill, 0.5)
  return np.where(np.isfinite(z), z, fill).astype(np.float32)


def _fit_gru(model: SequenceGRU, tx: optax.GradientTransformation, loss_fn, steps: int,
             batch_size: int, key: jax.Array, train: tuple[jax.Array, ...]):
  """Parameters of `model` after `steps` Adam steps on `loss_fn(params, *minibatch)`, the
  minibatches drawn with replacement from the arrays `train` (one `lax.scan`)."""
  k_init, k_data = jax.random.split(key)
  params = model.init(k_init, train[0][:1])
  with jax.numpy_dtype_promotion("standard"):
    opt_state = tx.init(params)

  def step(carry, i):
    p, s = carry
    idx = jax.random.randint(jax.random.fold_in(k_data, i), (batch_size,), 0, train[0].shape[0])
    loss, g = jax.value_and_grad(loss_fn)(p, *(a[idx] for a in train))
    with jax.numpy_dtype_promotion("standard"):  # optax's Adam mixes int/float internally
      upd, s = tx.update(g, s, p)
    return (optax.apply_updates(p, upd), s), loss

  (params, _), _ = jax.lax.scan(step, (params, opt_state), jnp.arange(steps))
  return params


@functools.lru_cache(maxsize=16)
def _disc_fn(hidden: int, steps: int, batch_size: int, learning_rate: float):
  """Jitted (keys[R], xtr[R,n,T,C], ytr[R,n], xte[R,m,T,C], yte[R,m]) -> held-out accuracy[R]."""
  model = SequenceGRU(hidden)
  tx = optax.adam(learning_rate)

  def loss_fn(p, xb, yb):
    return optax.sigmoid_binary_cross_entropy(model.apply(p, xb), yb).mean()

  def one(key, xtr, ytr, xte, yte):
    params = _fit_gru(model, tx, loss_fn, steps, batch_size, key, (xtr, ytr))
    pred = model.apply(params, xte) > 0
    return jnp.mean(pred == (yte > 0.5))

  return jax.jit(jax.vmap(one))


def discriminative_score(x_real: np.ndarray, x_syn: np.ndarray, seed: int, repeats: int = 5,
                         hidden: int | None = None, steps: int = 600, batch_size: int = 128,
                         learning_rate: float = 5e-3, max_per_side: int = 2000) -> dict:
  """|held-out accuracy - 0.5| of a GRU telling real from synthetic (0 = indistinguishable).

  Both sets are min-max scaled jointly per channel. Each repeat draws n = min(N_real, N_syn,
  max_per_side) series from each side (balanced classes), shuffles, splits 80/20, trains on 80%
  and scores accuracy on the held-out 20%.

  Args:
    x_real: float[Nr, T, C] real (train split). x_syn: float[Ns, T, C] synthetic, same units.
    seed: seeds the subsamples, splits, inits and minibatches.
    hidden: GRU width; None = `default_hidden(C)`.
  Returns:
    {"mean", "std", "per_repeat": [R floats], "repeats": R, "hidden": H}.
  """
  x_real, x_syn = _check("x_real", x_real), _check("x_syn", x_syn)
  if x_real.shape[1:] != x_syn.shape[1:]:
    raise ValueError(f"x_real {x_real.shape} and x_syn {x_syn.shape} differ in T or C.")
  _check_hparams(repeats, steps, batch_size, learning_rate)
  hidden = default_hidden(x_real.shape[2]) if hidden is None else int(hidden)
  lo, rng_ = _minmax(np.concatenate([x_real, x_syn]))
  xr, xs = _scale_fill(x_real, lo, rng_), _scale_fill(x_syn, lo, rng_)
  n = min(len(xr), len(xs), max_per_side)
  if n < 5:
    raise ValueError(f"discriminative_score needs >= 5 series per side; got {n}.")
  n_tr = int(round(0.8 * 2 * n))
  rng = np.random.default_rng(seed)
  xtr, ytr, xte, yte = [], [], [], []
  for _ in range(repeats):
    a = xr[rng.choice(len(xr), n, replace=False)]
    b = xs[rng.choice(len(xs), n, replace=False)]
    xx = np.concatenate([a, b])
    yy = np.concatenate([np.ones(n, np.float32), np.zeros(n, np.float32)])
    perm = rng.permutation(2 * n)
    xx, yy = xx[perm], yy[perm]
    xtr.append(xx[:n_tr])
    ytr.append(yy[:n_tr])
    xte.append(xx[n_tr:])
    yte.append(yy[n_tr:])
  keys = jax.random.split(jax.random.PRNGKey(seed), repeats)
  fn = _disc_fn(hidden, int(steps), int(batch_size), float(learning_rate))
  acc = np.asarray(fn(keys, np.stack(xtr), np.stack(ytr), np.stack(xte), np.stack(yte)))
  scores = np.abs(acc.astype(np.float64) - 0.5)
  return {"mean": float(scores.mean()), "std": float(scores.std()),
          "per_repeat": [float(s) for s in scores], "repeats": int(repeats), "hidden": hidden}


@functools.lru_cache(maxsize=16)
def _pred_fn(hidden: int, steps: int, batch_size: int, learning_rate: float):
  """Jitted (keys[R], xin[n,T-1,C'], tgt[n,T-1], obs, xin_te, tgt_te, obs_te) -> test MAE[R]."""
  model = SequenceGRU(hidden, per_step=True)
  tx = optax.adam(learning_rate)

  def loss_fn(p, xb, tb, ob):
    err = jnp.abs(model.apply(p, xb) - tb) * ob
    return err.sum() / jnp.maximum(ob.sum(), 1.0)

  def one(key, xin, tgt, obs, xin_te, tgt_te, obs_te):
    params = _fit_gru(model, tx, loss_fn, steps, batch_size, key, (xin, tgt, obs))
    return loss_fn(params, xin_te, tgt_te, obs_te)

  return jax.jit(jax.vmap(one, in_axes=(0, None, None, None, None, None, None)))


def _pred_arrays(x: np.ndarray, lo: np.ndarray, rng: np.ndarray):
  """Inputs (channels 0..C-2 at steps 0..T-2; the channel itself when C = 1), targets (last
  channel at 1..T-1), observed."""
  target_obs = np.isfinite(x[:, 1:, -1]).astype(np.float32)
  z = _scale_fill(x, lo, rng)
  inputs = z[:, :-1, :-1] if z.shape[2] > 1 else z[:, :-1]
  return inputs, z[:, 1:, -1], target_obs


def predictive_score(x_train_source: np.ndarray, x_test_real: np.ndarray, seed: int,
                     repeats: int = 3, hidden: int | None = None, steps: int = 300,
                     batch_size: int = 64, learning_rate: float = 5e-3) -> dict:
  """TimeGAN predictive score: test MAE of a GRU predicting the last channel one step ahead.

  The GRU reads channels 0..C-2 up to step t and predicts channel C-1 at step t+1 (L1 loss;
  a univariate series predicts its own next step from its past),
  trained on `x_train_source` (synthetic for the TSTR-style score, real train for the
  train-on-real reference), tested on `x_test_real`. Both are min-max scaled with the per-channel
  range of `x_test_real`, so MAEs of different sources are in the same units and comparable.
  Targets missing (NaN) in either set are left out of loss/MAE. Lower is better.

  Args:
    x_train_source: float[Ns, T, C]; x_test_real: float[Nt, T, C]; T >= 2.
  Returns:
    {"mean", "std", "per_repeat": [R floats], "repeats": R, "hidden": H} (MAE, scaled units).
  """
  xs, xt = _check("x_train_source", x_train_source), _check("x_test_real", x_test_real)
  if xs.shape[1:] != xt.shape[1:]:
    raise ValueError(f"x_train_source {xs.shape} and x_test_real {xt.shape} differ in T or C.")
  if xs.shape[1] < 2:
    raise ValueError(f"predictive_score needs T >= 2; got shape {xs.shape}.")
  _check_hparams(repeats, steps, batch_size, learning_rate)
  hidden = default_hidden(xs.shape[2]) if hidden is None else int(hidden)
  lo, rng_ = _minmax(xt)
  tr = _pred_arrays(xs, lo, rng_)
  te = _pred_arrays(xt, lo, rng_)
  keys = jax.random.split(jax.random.PRNGKey(seed), repeats)
  fn = _pred_fn(hidden, int(steps), int(batch_size), float(learning_rate))
  mae = np.asarray(fn(keys, *tr, *te), np.float64)
  return {"mean": float(mae.mean()), "std": float(mae.std()),
          "per_repeat": [float(m) for m in mae], "repeats": int(repeats), "hidden": hidden}


def _channel_stats(x: np.ndarray, observed: np.ndarray) -> tuple[np.ndarray, ...]:
  """Per-channel mean, std and pooled within-series lag-1 autocorrelation. x: [N, T, C].

  The autocorrelation is the pairwise (missing-data) estimator: numerator and both variance
  terms sum over the same lag-1 pairs whose two values are observed. Dividing the sum over
  observed pairs by the variance of *all* observed values instead would shrink it by about the
  fraction of observed values whose successor is observed (0.64 at 36% missing), so real data
  with gaps and complete synthetic series would not be comparable.
  """
  xo = np.where(observed, x, np.nan).astype(np.float64)
  # A series with a channel never observed has no level of its own: its pairs drop out.
  with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    mean = np.nanmean(xo, axis=(0, 1))
    std = np.nanstd(xo, axis=(0, 1))
    d = xo - np.nanmean(xo, axis=1, keepdims=True)  # remove each series' own level
    both = np.isfinite(d[:, 1:]) & np.isfinite(d[:, :-1])
    a, b = np.where(both, d[:, :-1], 0.0), np.where(both, d[:, 1:], 0.0)
    acf = (a * b).sum(axis=(0, 1)) / np.sqrt((a * a).sum(axis=(0, 1)) * (b * b).sum(axis=(0, 1)))
  return mean, std, acf


def channel_stats(x: np.ndarray, mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Per-channel `mean`, `std` and `acf1` (float64[C]) of the observed values of x[N, T, C]
  (mask True and finite; NaN = missing when no mask), as `marginal_stats` computes them."""
  x = _check("x", x)
  obs = np.isfinite(x) if mask is None else np.isfinite(x) & np.asarray(mask, bool)
  mean, std, acf = _channel_stats(x, obs)
  return {"mean": mean, "std": std, "acf1": acf}


def marginal_stats(x_real: np.ndarray, x_syn: np.ndarray, mask: np.ndarray | None = None,
                   syn_mask: np.ndarray | None = None) -> dict:
  """Per-channel marginal and autocorrelation comparison (same units for both).

  Statistics pool all observed values (mask True and finite; NaN = missing when no mask).
  Lag-1 autocorrelation removes each series' own mean first (within-stay dynamics) and sums over
  lag-1 pairs with both values observed (see `_channel_stats`), so gaps do not bias it.
  Differences: `mean_diff_sd` = (mean_syn - mean_real) / std_real (a standardised mean
  difference, since relative differences of near-zero means are meaningless),
  `std_rel_diff` = (std_syn - std_real) / std_real, `acf_diff` = acf_syn - acf_real.

  Returns:
    dict of lists of length C: real_mean, syn_mean, real_std, syn_std, real_acf1, syn_acf1,
    mean_diff_sd, std_rel_diff, acf_diff; plus scalar summaries max_abs_mean_diff_sd,
    max_abs_std_rel_diff, max_abs_acf_diff.
  """
  xr, xs = _check("x_real", x_real), _check("x_syn", x_syn)
  if xr.shape[2] != xs.shape[2]:
    raise ValueError(f"x_real {xr.shape} and x_syn {xs.shape} differ in C.")
  obs_r = np.isfinite(xr) if mask is None else np.isfinite(xr) & np.asarray(mask, bool)
  obs_s = np.isfinite(xs) if syn_mask is None else np.isfinite(xs) & np.asarray(syn_mask, bool)
  rm, rs, ra = _channel_stats(xr, obs_r)
  sm, ss, sa = _channel_stats(xs, obs_s)
  safe = np.where(rs > 0, rs, 1.0)
  out = {"real_mean": rm, "syn_mean": sm, "real_std": rs, "syn_std": ss, "real_acf1": ra,
         "syn_acf1": sa, "mean_diff_sd": (sm - rm) / safe, "std_rel_diff": (ss - rs) / safe,
         "acf_diff": sa - ra}
  res = {k: [float(v) for v in a] for k, a in out.items()}
  res["max_abs_mean_diff_sd"] = float(np.nanmax(np.abs(out["mean_diff_sd"])))
  res["max_abs_std_rel_diff"] = float(np.nanmax(np.abs(out["std_rel_diff"])))
  res["max_abs_acf_diff"] = float(np.nanmax(np.abs(out["acf_diff"])))
  return res
