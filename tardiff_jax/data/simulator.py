"""An embedded ICU vitals simulator: seeded, fully vectorised numpy, known ground truth.

Each stay is `T` hourly steps of 7 vitals in clinical units (HR bpm, SBP/DBP/MAP mmHg, RR /min,
temperature deg C, SpO2 %). Per stay: an age-like covariate and a frailty score shift the
baselines; vitals follow mean-reverting (Ornstein-Uhlenbeck) hourly dynamics with correlated
innovations (blood pressures co-move), a circadian term, non-lethal chronic conditions that
shift baselines like an acute signature would, deterioration events of four subtypes with
distinct signatures (scaled per stay, with rarer and deadlier variants whose signs flip),
measurement noise, physiological clipping and MIMIC-like missingness. Mortality is
Bernoulli(sigmoid(a + b * f)) where f combines frailty with the variant-specific lethality times
the persistent deterioration severity at the end of the window; `a` is solved so the mean risk
equals the target prevalence. The parameters make the task data-limited for a downstream
classifier (docs/simulator.md has the equations in words and the learning curves).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from sklearn import metrics as skm

from tardiff_jax.data.dataset import Dataset

CHANNEL_NAMES = ("HR", "SBP", "DBP", "MAP", "RR", "Temp", "SpO2")
CHANNEL_UNITS = ("bpm", "mmHg", "mmHg", "mmHg", "/min", "degC", "%")
SUBTYPE_NAMES = ("septic", "respiratory", "cardiogenic", "haemorrhagic")
# Probability of each subtype given a deterioration event; haemorrhagic is rare within the rare
# positive class.
SUBTYPE_PROBS = (0.47, 0.28, 0.18, 0.07)
# Physiological clipping ranges per channel (HR, SBP, DBP, MAP, RR, Temp, SpO2).
RANGES = ((25.0, 220.0), (50.0, 250.0), (20.0, 150.0), (30.0, 180.0), (4.0, 60.0),
          (32.0, 42.0), (50.0, 100.0))

# The six independently simulated channels; MAP is derived from SBP and DBP.
_BASE = ("HR", "SBP", "DBP", "RR", "Temp", "SpO2")
_POP_MEAN = np.array([84.0, 122.0, 66.0, 17.0, 36.9, 97.3])
_POP_SD = np.array([11.0, 14.0, 8.0, 2.5, 0.3, 1.1])
_AGE_SHIFT = np.array([-2.0, 6.0, -2.0, 0.5, -0.05, -0.4])  # Per age SD.
_FRAIL_SHIFT = np.array([4.0, -4.0, -2.5, 1.5, 0.1, -0.7])  # Per frailty SD.
_OU_TAU = np.array([4.0, 5.0, 5.0, 3.0, 8.0, 4.0])  # Mean-reversion time (hours).
_OU_SD = np.array([6.0, 8.0, 5.0, 2.0, 0.25, 1.0])  # Stationary SD of the OU deviation.
_OU_CORR = np.array([  # Correlation of the OU innovations (BP channels co-move).
    [1.00, -0.10, -0.05, 0.30, 0.20, -0.10],
    [-0.10, 1.00, 0.75, 0.00, 0.00, 0.05],
    [-0.05, 0.75, 1.00, 0.00, 0.00, 0.05],
    [0.30, 0.00, 0.00, 1.00, 0.10, -0.25],
    [0.20, 0.00, 0.00, 0.10, 1.00, 0.00],
    [-0.10, 0.05, 0.05, -0.25, 0.00, 1.00]])
_CIRC_AMP = np.array([4.0, 6.0, 3.0, 1.0, 0.3, 0.3])  # Circadian amplitude.
_CIRC_PEAK = np.array([16.0, 14.0, 14.0, 15.0, 18.0, 4.0])  # Clock hour of the maximum.
_NOISE_SD = np.array([2.0, 4.0, 3.0, 1.2, 0.1, 0.6])  # Measurement noise.
_MAP_NOISE_SD = 2.0
# Change of each base channel per unit of event severity, per subtype (the mean signature; each
# stay scales every channel by its own log-normal factor, and some channels flip, see below).
_SIGNATURES = np.array([
    [15.0, -10.0, -7.0, 4.0, 1.0, -1.4],  # septic: HR up, pressures down, temp up (or down), RR up.
    [8.0, 10.0, 6.0, 6.0, 0.2, -4.5],  # respiratory: SpO2 down, RR up, sympathetic BP surge.
    [7.0, -16.0, -8.0, 3.0, -0.2, -1.7],  # cardiogenic: MAP down, HR erratic, up or down.
    [19.0, -20.0, -14.0, 3.5, -0.5, -0.6],  # haemorrhagic: HR up, all pressures down.
])
_SIG_SCALE_SD = 0.35  # SD of the per-stay, per-channel log-scale of a signature.
_P_COLD_SEPSIS = 0.3  # Septic stays whose temperature falls (hypothermic sepsis, more lethal).
_P_BRADY_CARDIO = 0.4  # Cardiogenic stays whose heart rate falls (brady-arrhythmia, more lethal).
_CARDIO_HR_JITTER = 8.0  # Extra HR noise SD per unit severity (cardiogenic arrhythmia).
# Risk weight of each subtype's severity (warm septic, respiratory, tachy cardiogenic,
# haemorrhagic); hypothermic sepsis and bradycardic cardiogenic shock use _LETHALITY_FLIPPED.
_LETHALITY = np.array([0.8, 0.9, 1.0, 1.5])
_LETHALITY_FLIPPED = np.array([1.6, 0.9, 1.5, 1.5])
# Chronic, stable conditions: non-lethal baseline shifts that mimic the acute signatures' levels
# (COPD, chronic hypertension, beta-blockade / chronic hypotension, tachycardia from pain or
# atrial fibrillation, a fever that is being treated). Present from admission, constant.
_CHRONIC_RATE = 0.35  # Fraction of stays with a chronic condition.
_CHRONIC_PROBS = (0.25, 0.2, 0.2, 0.2, 0.15)  # Probability of each condition (rows below).
_CHRONIC_SIG = np.array([
    [4.0, 0.0, 0.0, 3.5, 0.0, -3.5],  # COPD / chronic hypoxaemia.
    [0.0, 20.0, 9.0, 0.0, 0.0, 0.0],  # chronic hypertension.
    [-9.0, -13.0, -7.0, 0.0, 0.0, 0.0],  # beta-blockade / chronic hypotension.
    [16.0, 0.0, 0.0, 2.0, 0.0, 0.0],  # tachycardia (pain, atrial fibrillation).
    [9.0, -5.0, -3.0, 2.0, 0.8, 0.0],  # treated infection (fever, mild vasodilation).
])
# Latent mortality score f = _W_FRAIL * frailty + _W_EVENT * lethality * severity at the end
# (+ _W_TRANSIENT * unresolved transient severity); risk = sigmoid(a + _B * f).
_W_FRAIL, _W_EVENT, _W_TRANSIENT, _B = 0.25, 1.0, 0.3, 2.45
_MISS_WEIGHT = np.array([0.6, 0.85, 0.85, 0.85, 0.8, 2.4, 0.65])  # Relative missingness.


@dataclasses.dataclass(frozen=True, eq=False)
class Simulation:
  """Simulated stays with their ground truth.

  Attributes:
    dataset: Dataset x float32[N, T, 7] (clinical units, NaN where unobserved), mask, y =
      in-hospital mortality (class_names ("survived", "died")).
    long_stay: int32[N], 1 if the ICU stay lasts more than 3 days.
    latent_risk: float64[N], the true probability of death.
    long_stay_risk: float64[N], the true probability of a long stay.
    subtype: int32[N], persistent deterioration subtype (index into `subtype_names`), -1 none.
    transient_subtype: int32[N], subtype of a transient (resolving) event, -1 none.
    severity: float32[N, T], latent severity trajectory (persistent + transient events).
    age: float32[N], the age-like covariate (years).
    oracle_auroc, oracle_auprc: latent_risk scored against the labels (AUPRC = average
      precision, step-wise); the ceiling for a classifier on the observed vitals.
    options: the simulator options used.
  """
  dataset: Dataset
  long_stay: np.ndarray
  latent_risk: np.ndarray
  long_stay_risk: np.ndarray
  subtype: np.ndarray
  transient_subtype: np.ndarray
  severity: np.ndarray
  age: np.ndarray
  oracle_auroc: float
  oracle_auprc: float
  options: dict
  subtype_names: tuple[str, ...] = SUBTYPE_NAMES

  def long_stay_dataset(self) -> Dataset:
    """The same stays labelled by ICU stay > 3 days (class_names ("short", "long"))."""
    ds = self.dataset
    return Dataset(x=ds.x, y=self.long_stay, mask=ds.mask, channel_names=ds.channel_names,
                   class_names=("short", "long"), name=ds.name + "_long_stay")


def simulate_icu(num_stays: int, seed: int = 0, *, T: int = 24, missing_rate: float = 0.15,
                 prevalence: float = 0.08, long_stay_rate: float = 0.14,
                 event_rate: float = 1.0, name: str = "icu_sim") -> Simulation:
  """Simulates `num_stays` ICU stays; the same arguments give the same bytes.

  Args:
    num_stays: N >= 1.
    seed: numpy seed.
    T: hourly steps per stay (default 24).
    missing_rate: mean fraction of unobserved values in [0, 0.9] (default 0.15).
    prevalence: target mortality rate in (0, 1) (default 0.08, as MIMIC-III).
    long_stay_rate: target rate of ICU stays > 3 days in (0, 1) (default 0.14).
    event_rate: multiplier on the deterioration / transient event probabilities (> 0).
    name: dataset name.
  """
  n = int(num_stays)
  if n < 1:
    raise ValueError(f"num_stays={num_stays} must be >= 1.")
  if T < 2:
    raise ValueError(f"T={T} must be >= 2.")
  if not 0.0 <= missing_rate <= 0.9:
    raise ValueError(f"missing_rate={missing_rate} must be in [0, 0.9].")
  for k, v in (("prevalence", prevalence), ("long_stay_rate", long_stay_rate)):
    if not 0.0 < v < 1.0:
      raise ValueError(f"{k}={v} must be in (0, 1).")
  if not event_rate > 0:
    raise ValueError(f"event_rate={event_rate} must be > 0.")
  rng = np.random.default_rng(int(seed))
  t = np.arange(T, dtype=np.float32)
  f32 = np.float32

  # Patient covariates and baselines.
  age = np.clip(rng.normal(65.0, 15.0, n), 18.0, 95.0)
  za = (age - 65.0) / 15.0
  frailty = 0.6 * za + 0.8 * rng.standard_normal(n)
  zb = rng.standard_normal((n, 6))
  zb[:, 2] = 0.6 * zb[:, 1] + 0.8 * zb[:, 2]  # Baseline SBP and DBP correlate.
  base = (_POP_MEAN + _POP_SD * zb + _AGE_SHIFT * za[:, None] + _FRAIL_SHIFT * frailty[:, None])
  # Chronic, stable conditions shift the baseline like an acute signature would (not lethal).
  has_chr = rng.uniform(size=n) < _CHRONIC_RATE
  chr_type = rng.choice(len(_CHRONIC_PROBS), size=n, p=_CHRONIC_PROBS)
  chr_mag = rng.uniform(0.5, 1.5, n)
  base = base + (has_chr * chr_mag)[:, None] * _CHRONIC_SIG[chr_type]

  # OU deviations with correlated innovations, started from the stationary law.
  chol = np.linalg.cholesky(_OU_CORR)
  phi = np.exp(-1.0 / _OU_TAU)
  innov = rng.standard_normal((T, n, 6), dtype=f32) @ chol.T.astype(f32)
  dev = np.empty((T, n, 6), dtype=f32)
  dev[0] = _OU_SD.astype(f32) * innov[0]
  step_sd = (_OU_SD * np.sqrt(1.0 - phi**2)).astype(f32)
  phi = phi.astype(f32)
  for i in range(1, T):
    dev[i] = phi * dev[i - 1] + step_sd * innov[i]
  dev = dev.transpose(1, 0, 2)  # [N, T, 6]

  # Circadian term from the clock hour of admission.
  hour0 = rng.uniform(0.0, 24.0, n).astype(f32)
  clock = hour0[:, None, None] + t[None, :, None]
  circ = _CIRC_AMP.astype(f32) * np.cos(f32(2.0 * np.pi / 24.0) * (clock - _CIRC_PEAK.astype(f32)))

  # Persistent deterioration: frail patients deteriorate more often.
  p_det = np.clip(event_rate * _sigmoid(-2.1 + 0.9 * frailty), 0.0, 1.0)
  has_det = rng.uniform(size=n) < p_det
  det_type = rng.choice(4, size=n, p=SUBTYPE_PROBS)
  det_onset = rng.uniform(-3.0, T - 2.0, n)
  det_width = rng.uniform(1.5, 4.0, n)
  det_mag = 0.35 + rng.gamma(2.0, 0.35, n)
  g_det = has_det[:, None] * det_mag[:, None] * _sigmoid((t - det_onset[:, None])
                                                        / det_width[:, None])
  # Transient events that resolve (mostly in survivors).
  p_tr = np.clip(event_rate * _sigmoid(-1.4 + 0.3 * frailty), 0.0, 1.0)
  has_tr = rng.uniform(size=n) < p_tr
  tr_type = rng.choice(4, size=n, p=SUBTYPE_PROBS)
  tr_onset = rng.uniform(-4.0, T - 4.0, n)
  tr_dur = rng.uniform(3.0, 10.0, n)
  tr_width = rng.uniform(1.0, 2.5, n)
  tr_mag = 0.3 + rng.gamma(2.0, 0.3, n)
  g_tr = (has_tr[:, None] * tr_mag[:, None]
          * _sigmoid((t - tr_onset[:, None]) / tr_width[:, None])
          * _sigmoid((tr_onset[:, None] + tr_dur[:, None] - t) / tr_width[:, None]))
  g_det, g_tr = g_det.astype(f32), g_tr.astype(f32)
  sig_det, flip_det = _stay_signatures(rng, det_type)
  sig_tr, flip_tr = _stay_signatures(rng, tr_type)
  effect = g_det[..., None] * sig_det[:, None, :] + g_tr[..., None] * sig_tr[:, None, :]
  cardio = g_det * (det_type == 2)[:, None] + g_tr * (tr_type == 2)[:, None]

  # Observed vitals: baseline + OU + circadian + events + measurement noise.
  vit = base.astype(f32)[:, None, :] + dev + circ + effect
  noise = rng.standard_normal((n, T, 6), dtype=f32) * _NOISE_SD.astype(f32)
  noise[..., 0] *= np.sqrt(1.0 + (f32(_CARDIO_HR_JITTER / _NOISE_SD[0]) * cardio) ** 2)
  true_sbp, true_dbp = vit[..., 1], np.minimum(vit[..., 2], vit[..., 1] - 15.0)
  vit = vit + noise
  map_ = (true_dbp + (true_sbp - true_dbp) / 3.0
          + _MAP_NOISE_SD * rng.standard_normal((n, T), dtype=f32))
  x = np.stack([vit[..., 0], vit[..., 1], np.minimum(vit[..., 2], vit[..., 1] - 5.0), map_,
                vit[..., 3], vit[..., 4], vit[..., 5]], axis=-1)
  lo, hi = np.array(RANGES, dtype=f32).T
  x = np.clip(x, lo, hi)

  # Outcomes.
  leth_det = np.where(flip_det, _LETHALITY_FLIPPED[det_type], _LETHALITY[det_type])
  leth_tr = np.where(flip_tr, _LETHALITY_FLIPPED[tr_type], _LETHALITY[tr_type])
  f = _W_FRAIL * frailty + _W_EVENT * leth_det * g_det[:, -1] + _W_TRANSIENT * leth_tr * g_tr[:, -1]
  risk = _sigmoid(_solve_intercept(_B * f, prevalence) + _B * f)
  died = (rng.uniform(size=n) < risk).astype(np.int32)
  f_long = (0.5 * frailty + 1.0 * g_tr.max(1) + 0.8 * g_det.max(1)
            + 0.6 * rng.standard_normal(n))
  long_risk = _sigmoid(_solve_intercept(2.0 * f_long, long_stay_rate) + 2.0 * f_long)
  long_stay = (rng.uniform(size=n) < long_risk).astype(np.int32)

  # MIMIC-like missingness: per-channel rates, per-stay propensity, BP channels missing together.
  w = _MISS_WEIGHT / _MISS_WEIGHT.mean()
  stay_factor = rng.gamma(4.0, 0.25, n)
  p_miss = np.clip(missing_rate * w * stay_factor[:, None], 0.0, 0.95).astype(f32)
  u = rng.random((n, T, 7), dtype=f32)
  u[..., 2] = u[..., 1]
  u[..., 3] = u[..., 1]
  mask = u >= p_miss[:, None, :]
  x = np.where(mask, x, f32(np.nan))

  ds = Dataset(x=x, y=died, mask=mask, channel_names=CHANNEL_NAMES,
               class_names=("survived", "died"), name=name)
  options = dict(T=T, missing_rate=missing_rate, prevalence=prevalence,
                 long_stay_rate=long_stay_rate, event_rate=event_rate)
  return Simulation(
      dataset=ds, long_stay=long_stay, latent_risk=risk, long_stay_risk=long_risk,
      subtype=np.where(has_det, det_type, -1).astype(np.int32),
      transient_subtype=np.where(has_tr, tr_type, -1).astype(np.int32),
      severity=(g_det + g_tr).astype(np.float32), age=age.astype(np.float32),
      oracle_auroc=float(skm.roc_auc_score(died, risk)),
      oracle_auprc=float(skm.average_precision_score(died, risk)),
      options=options)


def _stay_signatures(rng: np.random.Generator, subtype: np.ndarray):
  """float32[N, 6] per-stay signatures of `subtype` and bool[N] `flipped` (cold sepsis / brady).

  Each channel of the mean signature is scaled by exp(_SIG_SCALE_SD * N(0, 1)); hypothermic
  sepsis flips the temperature change and bradycardic cardiogenic shock the heart-rate change.
  """
  n = subtype.shape[0]
  scale = np.exp(_SIG_SCALE_SD * rng.standard_normal((n, 6)))
  u = rng.uniform(size=n)
  flipped = (((subtype == 0) & (u < _P_COLD_SEPSIS))
             | ((subtype == 2) & (u < _P_BRADY_CARDIO)))
  sig = _SIGNATURES[subtype] * scale
  sig[:, 4] = np.where(flipped & (subtype == 0), -sig[:, 4], sig[:, 4])
  sig[:, 0] = np.where(flipped & (subtype == 2), -sig[:, 0], sig[:, 0])
  return sig.astype(np.float32), flipped


def _sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def _solve_intercept(score: np.ndarray, target: float) -> float:
  """a such that mean(sigmoid(a + score)) == target (bisection; the mean is monotone in a)."""
  lo, hi = -40.0, 40.0
  for _ in range(80):
    mid = 0.5 * (lo + hi)
    if _sigmoid(mid + score).mean() < target:
      lo = mid
    else:
      hi = mid
  return 0.5 * (lo + hi)
