"""How the sampler's offline fits and the fidelity scores scale with the series length T.

  python benchmarks/bench_long_fits.py [--Ts 24,96,288] [--n 512]

The stages `benchmarks/bench_long_series.py` leaves out, on the same simulated stays (C = 3,
eICU's vitals, z-scored), in one process:
  * `fit_sampler` (x0 calibration, then the analytic variance's gamma; DDIM plan of
    `configs/default.py`, 2 noise draws as the pipeline) of the eICU U-Net
    (`configs/eicu_mortality.py`, random weights: the time does not depend on training) over
    `--n` training series: wall time with compilation (a second call measured the same at
    T = 24: the fit compiles per call, and runs once per denoiser);
  * the report's fidelity scores at the default settings (`evaluation.fidelity_repeats`,
    `evaluation.fidelity_steps`): the discriminative score (GRU real vs synthetic) and the
    predictive score (GRU one step ahead), `--n` series per side; wall time with compilation.
Every time has its ratio to T = 24. Writes benchmarks/results/bench_long_fits.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_long_series import ROOT, data  # noqa: E402

from tardiff_jax import io as tio  # noqa: E402
from tardiff_jax.config import experiment_config, load_config  # noqa: E402
from tardiff_jax.evaluation import fidelity  # noqa: E402
from tardiff_jax.models.unet1d import init_params, make_denoiser  # noqa: E402
from tardiff_jax.sampling import fit_sampler  # noqa: E402


def _wall(fn) -> float:
  t0 = time.perf_counter()
  jax.block_until_ready(jax.tree.leaves(fn()))
  return time.perf_counter() - t0


def bench_t(cfg, unet, t: int, n: int) -> dict:
  x, y = data(t, 3, 2 * n)
  xr, yr, xs = x[:n], y[:n], x[n:2 * n]
  unet = dataclasses.replace(unet, num_classes=2)
  _, apply_fn = make_denoiser(unet)
  params = jax.tree.map(lambda p: p + 0.01, init_params(unet, jax.random.PRNGKey(2), t, 3))
  schedule = cfg.diffusion.make_schedule()
  scfg = cfg.sampling
  fit = lambda: fit_sampler(apply_fn, params, schedule, scfg, xr, yr,  # noqa: E731
                            jax.random.PRNGKey(0), 2, batch_size=scfg.batch_size, draws=2)
  row = {"n": n, "fit_s": _wall(fit)}  # compiles per call (fits run once per denoiser)
  e = cfg.evaluation
  row["discriminative_s"] = _wall(lambda: fidelity.discriminative_score(
      xr, xs, seed=0, repeats=e.fidelity_repeats, steps=e.fidelity_steps)["mean"])
  row["predictive_s"] = _wall(lambda: fidelity.predictive_score(
      xs, xr, seed=0, steps=e.fidelity_steps // 2)["mean"])
  print(f"[bench] T={t}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()), flush=True)
  return row


def main():
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--Ts", default="24,96,288")
  ap.add_argument("--n", type=int, default=512, help="series per side")
  ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "bench_long_fits"))
  args = ap.parse_args()
  ts = sorted(int(t) for t in args.Ts.split(","))
  if ts[0] != 24:
    raise SystemExit("--Ts must include 24 (the reference of every ratio).")
  cfg = experiment_config(load_config("default"))
  unet = experiment_config(load_config("eicu_mortality")).unet
  res = {"command": f"python benchmarks/bench_long_fits.py --Ts={args.Ts} --n={args.n}",
         "device": str(jax.devices()[0]), "platform": platform.platform(),
         "cpu_count": os.cpu_count(), "load_avg_before": os.getloadavg(), "T": {}}
  t0 = time.perf_counter()
  for t in ts:
    res["T"][str(t)] = bench_t(cfg, unet, t, args.n)
  ref = res["T"]["24"]
  for t in res["T"]:
    res["T"][t]["ratio_vs_T24"] = {k: v / ref[k] for k, v in res["T"][t].items()
                                   if k.endswith("_s")}
  res["load_avg_after"] = os.getloadavg()
  res["wall_s"] = time.perf_counter() - t0
  tio.write_json(args.out + ".json", res)
  keys = [k for k in ref if k.endswith("_s")]
  lines = ["# Long series: the sampler's offline fits and the fidelity scores against T", "",
           f"`{res['command']}`", "",
           f"{res['device']}, {res['cpu_count']} CPUs, load average before "
           f"{res['load_avg_before'][0]:.2f}. Wall seconds for {args.n} series (per side), with "
           "the ratio to T = 24 (T / 24 is the length ratio); every time includes "
           "compilation (the fit and the fidelity GRUs compile per call).", "",
           "| stage | " + " | ".join(f"T = {t}" for t in ts) + " |", "|---|" + "---|" * len(ts)]
  for k in keys:
    lines.append(f"| {k} | " + " | ".join(
        f"{res['T'][str(t)][k]:.1f} ({res['T'][str(t)]['ratio_vs_T24'][k]:.1f}x)" for t in ts)
        + " |")
  tio.write_text(args.out + ".md", "\n".join(lines) + "\n")
  print(f"wrote {args.out}.json and .md ({res['wall_s']:.0f} s)")


if __name__ == "__main__":
  main()
