"""Fidelity of unguided samples: do they match the training data, per class and channel?

  python benchmarks/diffusion_fidelity.py --workdir=runs/simulator [--tag default]
  python benchmarks/diffusion_fidelity.py --workdir=runs/default_v --tag ddim50 --num_steps=50

Reads a pipeline workdir after its `generate` stage (synthetic/unguided.npz, original units) and
compares, per class and channel, the means, standard deviations and lag-1 autocorrelations of the
unguided samples with the real training split (observed values only), in clinical units.
A cell passes when the relative difference is within 15%. It also checks that the class
conditioning works: a logistic regression fitted on real train scores class-1 samples higher
than class-0 samples. Writes benchmarks/results/diffusion_fidelity[_TAG].json and .md.

Each cell also gets its sampling noise: the bootstrap standard error (over stays) of the relative
difference, real and synthetic sides combined; class 1 has few real stays, so its cells are noisy.

With --sample (implied by any sampler override: --sampler, --num_steps, --eta, --cfg_scale,
--clip_x0, --variance, --calibrate_x0, --counts, --key_offset) it instead draws a fresh unguided
set from the trained diffusion model in the workdir (EMA parameters, the workdir's config.json
with the overrides applied to its sampling section, the diffusion methods' sampling key unless
--key_offset) and evaluates that. The workdir is opened read-only (nothing is written into it):
the sampler's fits to the model (analytic variance, x0 calibration) are the pipeline's stored
ones when the overrides leave them unchanged (--eta, --clip_x0, --counts, --key_offset), and are
fitted here, as the pipeline fits them, otherwise.
--diagnose adds, per class and channel, the split of the pooled std into between-stay (std of
per-stay means) and within-stay (std around each stay's mean) parts, and quantiles of real and
synthetic values in normalised units (where heavy tails would show).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
import warnings

import numpy as np
from sklearn.linear_model import LogisticRegression

from tardiff_jax import io as tio
from tardiff_jax.evaluation.fidelity import channel_stats, marginal_stats
from tardiff_jax.experiment import Experiment, load_run

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
BOOTSTRAP = 200  # Resamples of stays for the standard errors of each statistic.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 0.15


def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.abs(a - b) / np.maximum(np.abs(b), 1e-8)


# Sampling settings that the sampler's fits to the denoiser do not depend on.
NOT_FITTED = ("eta", "clip_x0", "counts")


def draw_samples(exp: Experiment, overrides: dict, key_offset: int
                 ) -> tuple[np.ndarray, np.ndarray, float, dict, float]:
  """A fresh unguided set (original units) from the workdir's trained model, with the sampling
  overrides applied: (x, y, seconds, the sampling settings used, seconds spent fitting the
  sampler to the model here)."""
  import jax

  from tardiff_jax.sampling import class_counts, generate, make_sampler

  base = exp.config.sampling
  sampling = dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})
  d = exp.denoiser
  fit, fit_s = sampler_fit(exp, sampling)
  sample = jax.jit(make_sampler(d.apply_fn, d.schedule, sampling, d.num_classes,
                                gamma=fit.gamma, calibration=fit.calibration),
                   static_argnames="shape")
  counts = class_counts(exp.train_counts(), mode=sampling.counts)
  # The key every diffusion method of the pipeline samples with (w = 0 of TarDiff = unguided).
  key = exp.sampling_key
  if key_offset:
    key = jax.random.fold_in(key, int(key_offset))
  train = exp.data.train
  t0 = time.perf_counter()
  x, y = generate(sample, d.params, None, key, counts, (train.T, train.C), sampling.batch_size,
                  progress=False)
  seconds = time.perf_counter() - t0
  return exp.data.normalizer.inverse(x), y, seconds, dataclasses.asdict(sampling), fit_s


def sampler_fit(exp: Experiment, sampling):
  """The sampler's fits to the denoiser for `sampling`: the pipeline's stored fit when only
  settings it does not depend on changed, else fitted here by the pipeline's own stage (same
  key, draws and batches), kept in a scratch store that is deleted afterwards. Returns (fit,
  seconds spent fitting here)."""
  import tempfile

  from tardiff_jax.experiment import ArtifactStore
  from tardiff_jax.experiment.stages import fit_sampler_stats

  base = exp.config.sampling
  if dataclasses.replace(sampling, **{k: getattr(base, k) for k in NOT_FITTED}) == base:
    return exp.sampler_fit, 0.0
  cfg = dataclasses.replace(exp.config, sampling=sampling)
  t0 = time.perf_counter()
  with tempfile.TemporaryDirectory() as scratch:
    fit, _ = fit_sampler_stats(cfg, exp.data, exp.denoiser, ArtifactStore(scratch), quiet=True)
  return fit, time.perf_counter() - t0


def bootstrap_se(x: np.ndarray, mask: np.ndarray | None, seed: int) -> dict[str, np.ndarray]:
  """Bootstrap (over stays) standard error of each channel statistic of `channel_stats`."""
  rng = np.random.default_rng(seed)
  draws = {"mean": [], "std": [], "acf1": []}
  for _ in range(BOOTSTRAP):
    i = rng.integers(0, len(x), len(x))
    st = channel_stats(x[i], None if mask is None else mask[i])
    for k in draws:
      draws[k].append(st[k])
  return {k: np.std(np.stack(v), axis=0) for k, v in draws.items()}


ORACLE_SEED = 10_007  # Simulator seed of the --oracle stays (not a cohort's data seed).


def oracle_samples(sim_cfg, per_class: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """`per_class` fresh stays per class from the simulator with the cohort's prevalence
  (`SimulatorConfig`) but another seed and no missing values: draws from the true distribution,
  in clinical units."""
  from tardiff_jax.data import simulate_icu
  xs, ys, n = [], [], 0
  while min((np.sum(np.concatenate(ys) == c) if ys else 0) for c in range(num_classes)) \
      < per_class:
    sim = simulate_icu(20_000, seed=ORACLE_SEED + n, missing_rate=0.0,
                       prevalence=float(sim_cfg.prevalence))
    xs.append(sim.dataset.x)
    ys.append(sim.dataset.y)
    n += 1
  x, y = np.concatenate(xs), np.concatenate(ys)
  keep = np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(num_classes)])
  return x[keep], y[keep]


def _observed_stats(x: np.ndarray, obs: np.ndarray) -> dict:
  """Per channel: pooled std, between-stay std (of per-stay means), within-stay std."""
  x = np.where(obs, x, np.nan).astype(np.float64)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # Stays with a channel never observed.
    stay_mean = np.nanmean(x, axis=1)  # [N, C]
    within = np.sqrt(np.nanmean((x - stay_mean[:, None, :]) ** 2, axis=(0, 1)))
    between = np.nanstd(stay_mean, axis=0)
    pooled = np.nanstd(x.reshape(-1, x.shape[-1]), axis=0)
  return {"pooled": pooled.tolist(), "between": between.tolist(), "within": within.tolist()}


def diagnose(raw, xs: np.ndarray, ys: np.ndarray, normalizer) -> dict:
  """Variance decomposition (clinical units) and normalised-unit quantiles, per class."""
  out = {}
  zr_all = normalizer.transform(raw.x, raw.mask)
  zs_all = normalizer.transform(xs)
  for c in range(raw.num_classes):
    sel = raw.y == c
    obs = raw.mask[sel] & np.isfinite(raw.x[sel])
    dr = _observed_stats(raw.x[sel], obs)
    ds = _observed_stats(xs[ys == c], np.isfinite(xs[ys == c]))
    zr, zs = zr_all[sel], zs_all[ys == c]
    qr = [np.quantile(zr[..., k][obs[..., k]], QUANTILES).tolist() for k in range(raw.C)]
    qs = [np.quantile(zs[..., k].ravel(), QUANTILES).tolist() for k in range(raw.C)]
    out[str(c)] = {"real": dr, "syn": ds, "quantiles": list(QUANTILES), "real_q_norm": qr,
                   "syn_q_norm": qs}
  return out


def diagnose_lines(diag: dict, names: list[str]) -> list[str]:
  lines = ["## Diagnostics: std split and normalised quantiles", "",
           "Std in clinical units: pooled (as above), between-stay (std of per-stay means), "
           "within-stay (around each stay's mean). Quantiles of observed values in normalised "
           "units (real / synthetic).", ""]
  qh = " | ".join(f"q{int(round(q * 100)):02d} r/s" for q in QUANTILES)
  for c, d in diag.items():
    lines += [f"### class {c}", "",
              "| channel | pooled r | pooled s | between r | between s | within r | within s | "
              + qh + " |", "|---" * (7 + len(QUANTILES)) + "|"]
    for i, ch in enumerate(names):
      r, s = d["real"], d["syn"]
      q = " | ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(d["real_q_norm"][i], d["syn_q_norm"][i]))
      lines.append(f"| {ch} | {r['pooled'][i]:.2f} | {s['pooled'][i]:.2f} | {r['between'][i]:.2f} "
                   f"| {s['between'][i]:.2f} | {r['within'][i]:.2f} | {s['within'][i]:.2f} | "
                   f"{q} |")
    lines.append("")
  return lines


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--tag", default="")
  ap.add_argument("--method", default="unguided")
  ap.add_argument("--sample", action="store_true",
                  help="Draw a fresh unguided set from the workdir's model (see the docstring).")
  ap.add_argument("--sampler", choices=("ddim", "ddpm"), default=None)
  ap.add_argument("--num_steps", type=int, default=None, help="DDIM steps (ddpm uses all T).")
  ap.add_argument("--eta", type=float, default=None, help="DDIM eta in [0, 1].")
  ap.add_argument("--cfg_scale", type=float, default=None, help="Classifier-free scale.")
  ap.add_argument("--clip_x0", type=float, default=None, help="Clip x0_hat to [-c, c]; 0 = off.")
  ap.add_argument("--variance", choices=("ddim", "analytic"), default=None,
                  help="DDIM step noise: the step's sigma or Analytic-DPM's (see SamplerConfig).")
  ap.add_argument("--calibrate_x0", type=int, choices=(0, 1), default=None,
                  help="1: recalibrate x0_hat (estimate_calibration, fitted on train), 0: off.")
  ap.add_argument("--counts", default=None,
                  help='Samples per class, "n0,n1" (implies --sample; default: the training '
                  'counts). More samples shrink the synthetic side\'s noise.')
  ap.add_argument("--key_offset", type=int, default=0,
                  help="Fold this into the sampling key (0 = the pipeline's unguided key).")
  ap.add_argument("--oracle", type=int, default=0,
                  help="Instead of samples, score N fresh, fully observed simulator stays per "
                  "class (another sim seed): a perfect generator, i.e. the noise floor of the "
                  "test that comes from the real training split's size.")
  ap.add_argument("--diagnose", action="store_true",
                  help="Add the std decomposition and normalised quantiles.")
  args = ap.parse_args()
  exp = load_run(args.workdir)  # Read-only: trains and writes nothing.
  data = exp.data
  raw = data.raw.train
  overrides = {k: getattr(args, k) for k in ("sampler", "num_steps", "eta", "cfg_scale",
                                             "clip_x0", "counts", "variance",
                                             "calibrate_x0")}
  if args.calibrate_x0 is not None:
    overrides["calibrate_x0"] = bool(args.calibrate_x0)
  if args.sampler == "ddpm" and args.variance is None:
    overrides["variance"] = "ddim"  # The analytic variance is DDIM-only; DDPM uses its own.
  sampled = args.sample or args.key_offset != 0 or any(v is not None for v in overrides.values())
  sampling_info = None
  if args.oracle:
    xs, ys = oracle_samples(exp.config.data.simulator, args.oracle, raw.num_classes)
    sampling_info = {"oracle": {"per_class": args.oracle, "sim_seed": ORACLE_SEED}}
  elif sampled:
    if args.method != "unguided":
      raise SystemExit("--sample and the sampler overrides only apply to --method=unguided.")
    xs, ys, seconds, sampling, fit_s = draw_samples(exp, overrides, args.key_offset)
    sampling_info = {"sampling": sampling, "key_offset": args.key_offset, "seconds": seconds,
                     "sampler_fit_seconds": fit_s}
  else:
    with np.load(os.path.join(args.workdir, "synthetic", f"{args.method}.npz"),
                 allow_pickle=False) as z:
      xs, ys = z["x"], z["y"]
  names = list(raw.channel_names)
  table, n_pass, n_cells = {}, 0, 0
  for c in range(raw.num_classes):
    st = marginal_stats(raw.x[raw.y == c], xs[ys == c], mask=raw.mask[raw.y == c])
    r = {"mean": rel(st["syn_mean"], st["real_mean"]), "std": rel(st["syn_std"], st["real_std"]),
         "acf1": rel(st["syn_acf1"], st["real_acf1"])}
    # Sampling noise of each relative difference: bootstrap SEs of the real and the synthetic
    # statistic (over stays), combined, relative to the real value.
    se_r = bootstrap_se(raw.x[raw.y == c], raw.mask[raw.y == c], seed=c)
    se_s = bootstrap_se(xs[ys == c], None, seed=100 + c)
    noise = {k: np.sqrt(se_r[k] ** 2 + se_s[k] ** 2)
             / np.maximum(np.abs(np.asarray(st[f"real_{k}"])), 1e-8) for k in r}
    table[str(c)] = {
        "class_name": raw.class_names[c], "n_real": int(np.sum(raw.y == c)),
        "n_syn": int(np.sum(ys == c)), "channels": names,
        **{k: st[k] for k in ("real_mean", "syn_mean", "real_std", "syn_std", "real_acf1",
                              "syn_acf1")},
        **{f"rel_{k}": v.tolist() for k, v in r.items()},
        **{f"rel_se_{k}": v.tolist() for k, v in noise.items()},
        "pass": {k: (v <= TOL).tolist() for k, v in r.items()}}
    for v in r.values():
      n_pass += int(np.sum(v <= TOL))
      n_cells += v.size
  # Class conditioning: a simple classifier trained on real (normalised, filled) data.
  lr = LogisticRegression(max_iter=2000, C=0.1)
  tr = data.train
  lr.fit(tr.x.reshape(len(tr.x), -1), tr.y)
  p = lr.predict_proba(data.normalizer.transform(xs).reshape(len(xs), -1))[:, 1]
  thr = float(np.quantile(lr.predict_proba(tr.x.reshape(len(tr.x), -1))[:, 1],
                          1 - float(np.mean(tr.y))))
  cond = {"mean_p1_class1": float(p[ys == 1].mean()), "mean_p1_class0": float(p[ys == 0].mean()),
          "frac_pred1_class1": float(np.mean(p[ys == 1] >= thr)),
          "frac_pred1_class0": float(np.mean(p[ys == 0] >= thr)),
          "threshold": thr, "threshold_rule": "top-prevalence quantile of real-train scores"}
  res = {"workdir": os.path.abspath(args.workdir), "method": args.method, "tolerance": TOL,
         "cells_within_tolerance": n_pass, "cells": n_cells, "per_class": table,
         "class_conditioning": cond}
  if sampling_info is not None:
    res["fresh_samples"] = sampling_info
  diag = diagnose(raw, xs, ys, data.normalizer) if args.diagnose else None
  if diag is not None:
    res["diagnostics"] = diag
  tag = f"_{args.tag}" if args.tag else ""
  out = os.path.join(ROOT, "benchmarks", "results", f"diffusion_fidelity{tag}")
  tio.write_json(out + ".json", res)
  lines = [f"# Unguided samples vs real train ({args.method}), per class and channel", "",
           f"Workdir `{args.workdir}`; relative difference |syn - real| / |real| in clinical "
           f"units, observed real values only. Within {TOL:.0%}: {n_pass}/{n_cells} cells.", ""]
  if sampling_info is not None and "oracle" in sampling_info:
    lines += [f"Oracle: {args.oracle} fresh, fully observed simulator stays per class (seed "
              f"{ORACLE_SEED}) in place of samples: a perfect generator.", ""]
  elif sampling_info is not None:
    sp = sampling_info["sampling"]
    lines += [f"Fresh samples from the workdir's model: sampler={sp['sampler']}, "
              f"num_steps={sp['num_steps']}, eta={sp['eta']}, cfg_scale={sp['cfg_scale']}, "
              f"clip_x0={sp['clip_x0']}, variance={sp.get('variance', 'ddim')}, "
              f"calibrate_x0={sp.get('calibrate_x0', False)}, "
              f"counts={sp.get('counts', 'match')}, key_offset={args.key_offset} "
              f"({sampling_info['seconds']:.1f}s).", ""]
  for c, t in table.items():
    lines += [f"## class {c} ({t['class_name']}): {t['n_real']} real, {t['n_syn']} synthetic", "",
              "| channel | mean real | mean syn | rel | std real | std syn | rel | acf1 real | "
              "acf1 syn | rel |", "|---|---|---|---|---|---|---|---|---|---|"]
    for i, ch in enumerate(t["channels"]):
      lines.append(
          f"| {ch} | {t['real_mean'][i]:.2f} | {t['syn_mean'][i]:.2f} | {t['rel_mean'][i]:.1%} "
          f"| {t['real_std'][i]:.2f} | {t['syn_std'][i]:.2f} | {t['rel_std'][i]:.1%} "
          f"| {t['real_acf1'][i]:.3f} | {t['syn_acf1'][i]:.3f} | {t['rel_acf1'][i]:.1%} |")
    lines.append("")
  fails = [(c, k, ch, t[f"rel_{k}"][i], t[f"rel_se_{k}"][i]) for c, t in table.items()
           for k in ("mean", "std", "acf1") for i, ch in enumerate(t["channels"])
           if not t["pass"][k][i]]
  lines += ["## Cells outside the tolerance, with their sampling noise", "",
            f"SE: bootstrap ({BOOTSTRAP} resamples of stays) standard error of the relative "
            "difference, real and synthetic sides combined.", ""]
  lines += [f"- class {c} {ch} {k}: {v:.1%} (SE {se:.1%}, {v / max(se, 1e-12):.1f} SE)"
            for c, k, ch, v, se in fails] or ["- none"]
  lines += ["", "## Class conditioning", "",
            f"Logistic regression on real train: mean P(died) of class-1 samples "
            f"{cond['mean_p1_class1']:.3f} vs class-0 samples {cond['mean_p1_class0']:.3f}; "
            f"predicted positive (top-prevalence threshold) {cond['frac_pred1_class1']:.1%} vs "
            f"{cond['frac_pred1_class0']:.1%}.", ""]
  if diag is not None:
    lines += diagnose_lines(diag, names)
  tio.write_text(out + ".md", "\n".join(lines))
  print("\n".join(lines))


if __name__ == "__main__":
  main()
