"""The embedded ICU simulator (SPECS 2): shapes, units, prevalence, oracle, subtypes, determinism,
speed, data-limited learning curve. numpy + sklearn only (no JAX)."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score

from tardiff_jax.data import CHANNEL_NAMES, SUBTYPE_NAMES, simulate_icu
from tardiff_jax.data.simulator import (
  _P_BRADY_CARDIO,
  _P_COLD_SEPSIS,
  _SIG_SCALE_SD,
  _SIGNATURES,
  RANGES,
  _stay_signatures,
)

N = 20_000


@pytest.fixture(scope="module")
def timed_sim():
  simulate_icu(50)  # Warm numpy up; the timing below is of the simulation itself.
  t0 = time.process_time()
  sim = simulate_icu(N, seed=0)
  return sim, time.process_time() - t0


@pytest.fixture(scope="module")
def sim(timed_sim):
  return timed_sim[0]


def test_shapes_and_types(sim):
  ds = sim.dataset
  assert ds.x.shape == (N, 24, 7) and ds.x.dtype == np.float32
  assert ds.y.shape == (N,) and ds.y.dtype == np.int32
  assert ds.mask.shape == ds.x.shape and ds.mask.dtype == np.bool_
  assert ds.channel_names == CHANNEL_NAMES and ds.class_names == ("survived", "died")
  assert sim.long_stay.shape == (N,) and sim.long_stay.dtype == np.int32
  assert sim.latent_risk.shape == sim.subtype.shape == (N,)
  assert sim.severity.shape == (N, 24)
  assert sim.subtype_names == SUBTYPE_NAMES


def test_units_ranges_and_map(sim):
  ds = sim.dataset
  assert np.isnan(ds.x[~ds.mask]).all() and np.isfinite(ds.x[ds.mask]).all()
  for c, (lo, hi) in enumerate(RANGES):
    v = ds.x[..., c][ds.mask[..., c]]
    assert v.min() >= lo and v.max() <= hi, CHANNEL_NAMES[c]
  med = np.nanmedian(ds.x, axis=(0, 1))
  # Plausible adult ICU medians: HR, SBP, DBP, MAP, RR, Temp, SpO2.
  for m, (lo, hi) in zip(med, [(70, 100), (105, 135), (55, 75), (70, 95), (14, 22), (36.5, 37.5),
                               (95, 99)]):
    assert lo <= m <= hi, med
  sbp, dbp, map_ = ds.x[..., 1], ds.x[..., 2], ds.x[..., 3]
  both = ds.mask[..., 1] & ds.mask[..., 2]
  resid = (map_ - (dbp + (sbp - dbp) / 3.0))[both]
  assert np.abs(np.median(resid)) < 1.0 and np.mean(np.abs(resid)) < 4.0
  assert (dbp[both] < sbp[both]).all()
  # Blood pressures co-move within a stay (centred per stay).
  s = sbp - np.nanmean(sbp, 1, keepdims=True)
  d = dbp - np.nanmean(dbp, 1, keepdims=True)
  assert np.corrcoef(s[both], d[both])[0, 1] > 0.4


def test_missingness(sim):
  miss = 1.0 - sim.dataset.mask.mean()
  assert abs(miss - 0.15) < 0.02
  per_channel = 1.0 - sim.dataset.mask.mean((0, 1))
  assert per_channel[5] > per_channel[0]  # Temperature is charted less often than HR.
  full = simulate_icu(200, seed=1, missing_rate=0.0)
  assert full.dataset.mask.all()


def test_prevalence_and_long_stay(sim):
  assert abs(sim.dataset.y.mean() - 0.08) <= 0.02
  assert abs(sim.long_stay.mean() - 0.14) <= 0.02
  hi = simulate_icu(5000, seed=2, prevalence=0.2)
  assert abs(hi.dataset.y.mean() - 0.2) <= 0.03
  assert abs(hi.latent_risk.mean() - 0.2) < 1e-6  # The intercept is solved exactly.


def test_oracle(sim):
  assert 0.75 <= sim.oracle_auroc <= 0.95
  y, r = sim.dataset.y, sim.latent_risk
  assert sim.oracle_auroc == roc_auc_score(y, r)
  assert sim.oracle_auprc == average_precision_score(y, r)
  assert sim.oracle_auprc > 2 * y.mean()


def test_subtypes(sim):
  y = sim.dataset.y
  pos = np.bincount(sim.subtype[y == 1] + 1, minlength=5)[1:]
  assert (pos > 0).all()
  haem = SUBTYPE_NAMES.index("haemorrhagic")
  assert 0 < pos[haem] / (y == 1).sum() < 0.1  # A rare condition inside the rare class.
  # Deterioration raises the death rate; transient events occur in survivors too.
  assert y[sim.subtype >= 0].mean() > 3 * y[sim.subtype < 0].mean()
  assert ((sim.transient_subtype >= 0) & (y == 0)).sum() > 0.1 * N


def test_signatures_visible(sim):
  """Each subtype moves its key channels in the documented direction (last 6 h, vs no event)."""
  ds = sim.dataset
  with warnings.catch_warnings():  # A few stays miss a channel for all of the last 6 hours.
    warnings.simplefilter("ignore", RuntimeWarning)
    late = np.nanmean(ds.x[:, -6:], axis=1)  # [N, C]
  sev = sim.severity[:, -1]
  calm = (sim.subtype < 0) & (sim.transient_subtype < 0)
  ref = np.nanmean(late[calm], 0)
  ch = {c: i for i, c in enumerate(CHANNEL_NAMES)}
  expected = {
      "septic": {"HR": 1, "MAP": -1, "Temp": 1, "RR": 1},
      "respiratory": {"SpO2": -1, "RR": 1},
      "cardiogenic": {"MAP": -1},
      "haemorrhagic": {"HR": 1, "SBP": -1, "DBP": -1, "MAP": -1, "Temp": -1},  # Not septic.
  }
  for k, name in enumerate(SUBTYPE_NAMES):
    sel = (sim.subtype == k) & (sim.transient_subtype < 0) & (sev > 0.8)
    diff = np.nanmean(late[sel], 0) - ref
    for c, sign in expected[name].items():
      assert sign * diff[ch[c]] > 0.5 * np.nanstd(late[calm][:, ch[c]]), (name, c, diff)
  # Cardiogenic: erratic HR (larger hour-to-hour changes).
  d_hr = np.abs(np.diff(ds.x[:, -8:, 0], axis=1))
  cardio = (sim.subtype == 2) & (sev > 0.8)
  assert np.nanmean(d_hr[cardio]) > 1.5 * np.nanmean(d_hr[calm])
  # The class signal is visible: non-survivors' late vitals differ from survivors'.
  y = ds.y
  assert np.nanmean(late[y == 1, ch["HR"]]) > np.nanmean(late[y == 0, ch["HR"]]) + 5
  assert np.nanmean(late[y == 1, ch["MAP"]]) < np.nanmean(late[y == 0, ch["MAP"]]) - 3


def test_stay_signatures():
  """Per-stay signatures: log-normal channel scales; cold sepsis / bradycardic shock flip a sign."""
  rng = np.random.default_rng(0)
  subtype = rng.integers(0, 4, 40_000)
  sig, flipped = _stay_signatures(rng, subtype)
  assert sig.shape == (40_000, 6) and sig.dtype == np.float32
  assert abs(flipped[subtype == 0].mean() - _P_COLD_SEPSIS) < 0.02
  assert abs(flipped[subtype == 2].mean() - _P_BRADY_CARDIO) < 0.02
  assert not flipped[(subtype == 1) | (subtype == 3)].any()
  ratio = sig / _SIGNATURES[subtype]
  sign = np.ones_like(ratio)
  sign[(subtype == 0) & flipped, 4] = -1.0  # Temperature falls in hypothermic sepsis.
  sign[(subtype == 2) & flipped, 0] = -1.0  # Heart rate falls in bradycardic shock.
  assert (np.sign(ratio) == sign).all()
  log_scale = np.log(np.abs(ratio))
  assert np.abs(log_scale.mean()) < 0.01 and abs(log_scale.std() - _SIG_SCALE_SD) < 0.01


def test_data_limited(sim):
  """A simple classifier keeps improving from 250 to 4,000 training stays (not learnt from ~20
  positives), and stays below the oracle."""
  x, y = sim.dataset.x, sim.dataset.y
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    f = np.concatenate([np.nanmean(x, 1), np.nanmean(x[:, :6], 1), np.nanmean(x[:, -6:], 1),
                        np.nanstd(x, 1)], axis=1)
  f = np.where(np.isnan(f), np.nanmean(f, 0), f)
  f = (f - f.mean(0)) / f.std(0)
  te = np.arange(N - 4000, N)

  def fit(idx):
    clf = LogisticRegression(C=0.1, max_iter=1000).fit(f[idx], y[idx])
    p = clf.predict_proba(f[te])[:, 1]
    return roc_auc_score(y[te], p), average_precision_score(y[te], p)

  small = np.mean([fit(np.arange(k * 250, (k + 1) * 250)) for k in range(4)], axis=0)
  large = fit(np.arange(4000))
  oracle_auprc = average_precision_score(y[te], sim.latent_risk[te])
  assert large[1] - small[1] > 0.045, (small, large)
  assert large[1] < oracle_auprc - 0.05 and large[0] > 0.75, (large, oracle_auprc)


def test_determinism():
  a, b = simulate_icu(500, seed=3), simulate_icu(500, seed=3)
  for u, v in ((a.dataset.x, b.dataset.x), (a.dataset.y, b.dataset.y),
               (a.dataset.mask, b.dataset.mask), (a.latent_risk, b.latent_risk),
               (a.long_stay, b.long_stay), (a.subtype, b.subtype)):
    assert u.tobytes() == v.tobytes()
  c = simulate_icu(500, seed=4)
  assert a.dataset.x.tobytes() != c.dataset.x.tobytes()


def test_speed(timed_sim):
  _, cpu_s = timed_sim
  assert cpu_s < 5.0, f"20,000 stays took {cpu_s:.2f} s of CPU"


def test_options_validation():
  with pytest.raises(ValueError, match="missing_rate"):
    simulate_icu(10, missing_rate=0.95)
  with pytest.raises(ValueError, match="prevalence"):
    simulate_icu(10, prevalence=0.0)
  with pytest.raises(ValueError, match="num_stays"):
    simulate_icu(0)
  with pytest.raises(TypeError):
    simulate_icu(10, prevalance=0.1)  # Misspelt options are not silently ignored.
  short = simulate_icu(30, seed=0, T=12)
  assert short.dataset.x.shape == (30, 12, 7)


def test_long_stay_dataset(sim):
  d = sim.long_stay_dataset()
  np.testing.assert_array_equal(d.y, sim.long_stay)
  assert d.class_names == ("short", "long") and d.x is sim.dataset.x
