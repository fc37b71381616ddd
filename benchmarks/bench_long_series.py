"""How every stage scales with the series length T (e.g. eICU's 288 five-minute steps).

  python benchmarks/bench_long_series.py [--Ts 24,96,288] [--Cs 3,7] [--group 12]
      [--before-Ts 24,288] [--before-Cs 3] [--before-impl unfold] [--sample-batch 32]
      [--sample-steps 20]

For each T and C, on simulated stays (`simulate_icu(T=...)`, z-scored; C = 3 keeps heart rate,
respiratory rate and SpO2, eICU's channels), in one process:
  * diffusion training step (examples/s) of the default U-Net (`configs/default.py`) and of the
    long-series U-Net of `configs/eicu_mortality.py` (one more halving, attention at the coarsest
    level only), at the default diffusion batch;
  * unguided and influence-guided DDIM (`--sample-steps`, plain DDIM as
    benchmarks/bench_guidance.py) with the default guide, samples/s; the guidance-cache build
    (guide per-example gradients), examples/s;
  * TimesNet and GRU training through the trainer (`train_classifier_seeds`, the protocols'
    widths), one model alone and `--group` models vmapped: examples/s, from the difference of a
    2-epoch and a 1-epoch training (compilation excluded, the trainer's validation pass included);
    the TimesNet training step's XLA FLOPs per example;
  * at `--before-Ts` x `--before-Cs`: the TimesNet group with an earlier TimesBlock path
    (`--before-impl`): "unfold" (row-wise matmuls, the long-series path before "spectral") or
    "conv" (XLA convolutions, the one before that; slow: one warm epoch is timed, not two).
Every throughput has its ratio to T = 24 (same C). Writes
benchmarks/results/bench_long_series.{json,md}, shaped {"T": {"24": {"C3": {...}, "C7": {...},
"timesnet_group_examples_per_s": ...}, ...}} (the top-level numbers of a T are at the largest C).
The machine's load average is recorded: on a shared CPU the numbers scale with it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from tardiff_jax import io as tio
from tardiff_jax.config import experiment_config, load_config
from tardiff_jax.data import make_normalizer, normalize_dataset, simulate_icu
from tardiff_jax.diffusion import eps_loss
from tardiff_jax.influence import build_guidance_cache, make_gparams, make_influence_guidance
from tardiff_jax.models.classifier import make_classifier
from tardiff_jax.models.timesnet import choose_impl, timesnet_periods
from tardiff_jax.models.unet1d import UNet1D, init_params, make_denoiser
from tardiff_jax.sampling import SamplerConfig, make_sampler
from tardiff_jax.training.classifier_trainer import CHUNK, train_classifier_seeds
from tardiff_jax.training.diffusion_trainer import init_state, make_optimizer, make_train_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EICU_CHANNELS = (0, 4, 6)  # heart rate, respiratory rate, SpO2 of the simulator's 7 vitals


def _timed(fn) -> float:
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t0


def _best(fn, repeats: int) -> float:
  return min(_timed(fn) for _ in range(repeats))


def _flops(compiled) -> float | None:
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])
  except Exception:  # Cost analysis is best effort (backend dependent).
    return None


def data(t: int, c: int, n: int):
  sim = simulate_icu(n, seed=0, T=t)
  ds = normalize_dataset(sim.dataset, make_normalizer("zscore").fit(sim.dataset))
  x = np.nan_to_num(ds.x.astype(np.float32))
  if c == 3:
    x = x[..., list(EICU_CHANNELS)]
  elif c != x.shape[-1]:
    raise ValueError(f"--Cs takes 3 (eICU's channels) or {x.shape[-1]}, got {c}.")
  return x, ds.y.astype(np.int32)


def bench_unet(cfg, unet, x, y, repeats: int) -> dict:
  """One training step of the denoiser at the config's diffusion batch: examples/s."""
  b = cfg.train_diffusion.batch_size
  _, t, c = x.shape
  unet = dataclasses.replace(unet, num_classes=2)
  opt = make_optimizer(cfg.train_diffusion)
  schedule = cfg.diffusion.make_schedule()
  loss_fn = lambda apply, p, sch, x0, yb, m, key: eps_loss(  # noqa: E731
      apply, p, sch, x0, yb, m, key, loss=cfg.diffusion.loss, prediction=cfg.diffusion.prediction)
  step = make_train_step(UNet1D(unet), opt, schedule, cfg.train_diffusion, b, loss_fn)
  state = init_state(unet, opt, 0, t, c)
  idx = np.arange(b) % x.shape[0]  # the step draws its minibatch from these b examples
  xb, yb, mb = jnp.asarray(x[idx]), jnp.asarray(y[idx]), jnp.ones((b, t, c), bool)
  t0 = time.perf_counter()
  compiled = step.lower(state, xb, yb, mb).compile()
  compile_s = time.perf_counter() - t0
  box = [state]

  def one():
    box[0], loss = compiled(box[0], xb, yb, mb)
    return loss

  one()
  sec = _best(one, repeats)
  return {"batch": b, "examples_per_s": b / sec, "steps_per_s": 1.0 / sec,
          "compile_s": compile_s, "flops_per_example": (_flops(compiled) or 0.0) / b}


def bench_sampling(cfg, x, y, batch: int, steps: int, cache_n: int) -> dict:
  """Unguided and influence-guided plain DDIM (random U-Net and guide: speed does not depend on
  training) and the guidance-cache build."""
  _, t, c = x.shape
  unet = dataclasses.replace(cfg.unet, num_classes=2)
  _, apply_fn = make_denoiser(unet)
  uparams = jax.tree.map(lambda p: p + 0.01, init_params(unet, jax.random.PRNGKey(2), t, c))
  periods = timesnet_periods(x, cfg.classifier.timesnet.top_k)
  clf = make_classifier(cfg.classifier.spec(2, t, c, periods=periods))
  cparams = clf.init(jax.random.PRNGKey(1), t, c)
  xs, ys = x[:cache_n], y[:cache_n]
  bs = int(cfg.guidance.cache_batch_size)
  first = _timed(lambda: build_guidance_cache(clf.loss_fn, cparams, xs, ys, batch_size=bs).G)
  warm = _timed(lambda: build_guidance_cache(clf.loss_fn, cparams, xs, ys, batch_size=bs).G)
  cache = build_guidance_cache(clf.loss_fn, cparams, xs, ys, batch_size=bs)
  out = {"guide": clf.config.model, "batch": batch, "steps": steps,
         "cache": {"n": len(xs), "first_s": first, "examples_per_s": len(xs) / warm}}
  scfg = SamplerConfig(sampler="ddim", num_steps=steps, eta=1.0, variance="ddim",
                       calibrate_x0=False)
  labels = jnp.asarray(np.arange(batch) % 2, jnp.int32)
  key = jax.random.PRNGKey(3)
  for name in ("unguided", "guided"):
    fn = None if name == "unguided" else make_influence_guidance(clf.loss_fn, cfg.guidance.variant)
    gp = None if fn is None else make_gparams(cparams, cache.G, 1.0)
    sample = jax.jit(make_sampler(apply_fn, cfg.diffusion.make_schedule(), scfg, 2,
                                  guidance_fn=fn), static_argnames="shape")
    t0 = time.perf_counter()
    compiled = sample.lower(uparams, gp, key, labels, shape=(batch, t, c)).compile()
    compile_s = time.perf_counter() - t0
    sec = _best(lambda s=compiled, g=gp: s(uparams, g, key, labels), 1)
    out[name] = {"samples_per_s": batch / sec, "compile_s": compile_s}
  return out


def bench_classifier(cfg, model: str, x, y, seeds: int, impl: str = "auto",
                     one_epoch: bool = False) -> dict:
  """Trainer throughput of `seeds` vmapped models (the protocols' widths): examples/s, from a
  2-epoch minus a 1-epoch training, or (`one_epoch`, for slow paths) one warm 1-epoch training,
  which slightly understates the throughput (it includes the validation pass)."""
  _, t, c = x.shape
  periods = timesnet_periods(x, cfg.classifier.timesnet.top_k) if model == "timesnet" else None
  ccfg = cfg.classifier.spec(2, t, c, model=model, periods=periods)
  clf = make_classifier(ccfg, impl)
  tcfg = cfg.train_classifier
  b = min(tcfg.batch_size, x.shape[0])
  epoch = CHUNK * b  # one compiled chunk of minibatches per epoch
  x_val, y_val = x[:b], y[:b]

  def train(epochs):
    config = dataclasses.replace(tcfg, max_epochs=epochs, patience=epochs)
    return train_classifier_seeds(clf, x, y, x_val, y_val, config, list(range(seeds)),
                                  epoch_size=epoch, quiet=True)[0]

  compile_s = _timed(lambda: train(1))
  if one_epoch:  # a warm 1-epoch training (its validation pass and setup included)
    sec = _timed(lambda: train(1))
  else:
    sec = _timed(lambda: train(2)) - _timed(lambda: train(1))
  out = {"seeds": seeds, "examples_per_s": seeds * epoch / max(sec, 1e-9),
         "first_call_s_incl_compile": compile_s,
         "timing": "warm 1-epoch training" if one_epoch else "2-epoch minus 1-epoch training"}
  if model == "timesnet":
    out["periods"] = list(periods)
    out["impl"] = choose_impl(t, periods, ccfg.d_model, ccfg.d_ff, ccfg.num_kernels) \
        if impl == "auto" else impl
    loss = lambda p, xb, yb: jnp.mean(jax.vmap(clf.loss_fn, (None, 0, 0))(p, xb, yb))  # noqa
    params = clf.init(jax.random.PRNGKey(0), t, c)
    grad = jax.jit(jax.grad(loss)).lower(params, jnp.asarray(x[:b]), jnp.asarray(y[:b]))
    out["grad_flops_per_example"] = (_flops(grad.compile()) or 0.0) / b
  return out


def bench_t_c(cfg, eicu_unet, t: int, c: int, args) -> dict:
  x, y = data(t, c, max(args.n, args.cache_n))
  row: dict = {}
  print(f"[bench] T={t} C={c}: diffusion step", flush=True)
  row["diffusion_default_unet"] = bench_unet(cfg, cfg.unet, x, y, args.repeats)
  row["diffusion_long_unet"] = bench_unet(cfg, eicu_unet, x, y, args.repeats)
  print(f"[bench] T={t} C={c}: sampling", flush=True)
  row["sampling"] = bench_sampling(cfg, x, y, args.sample_batch, args.sample_steps, args.cache_n)
  xt, yt = x[:args.n], y[:args.n]
  for model in ("timesnet", "gru"):
    for seeds, name in ((1, "alone"), (args.group, "group")):
      print(f"[bench] T={t} C={c}: {model} {name}", flush=True)
      row[f"{model}_{name}"] = bench_classifier(cfg, model, xt, yt, seeds)
  if t in args.before_Ts and c in args.before_Cs:
    impl = args.before_impl
    print(f"[bench] T={t} C={c}: timesnet group, {impl}", flush=True)
    row[f"timesnet_group_{impl}"] = bench_classifier(cfg, "timesnet", xt, yt, args.group, impl,
                                                     one_epoch=impl == "conv")
  print(f"[bench] T={t} C={c}: " + ", ".join(f"{k} {v:.4g}" for k, v in flat(row).items()),
        flush=True)
  return row


def flat(row: dict) -> dict:
  """The throughputs of one (T, C) under the names of the results' table."""
  s = row["sampling"]
  out = {
      "diffusion_step_examples_per_s": row["diffusion_default_unet"]["examples_per_s"],
      "diffusion_step_long_unet_examples_per_s": row["diffusion_long_unet"]["examples_per_s"],
      "unguided_samples_per_s": s["unguided"]["samples_per_s"],
      "guided_samples_per_s": s["guided"]["samples_per_s"],
      "guidance_cache_examples_per_s": s["cache"]["examples_per_s"],
      "timesnet_examples_per_s": row["timesnet_alone"]["examples_per_s"],
      "timesnet_group_examples_per_s": row["timesnet_group"]["examples_per_s"],
      "gru_examples_per_s": row["gru_alone"]["examples_per_s"],
      "gru_group_examples_per_s": row["gru_group"]["examples_per_s"],
  }
  for impl in ("unfold", "conv"):
    if f"timesnet_group_{impl}" in row:
      out[f"timesnet_group_{impl}_examples_per_s"] = row[f"timesnet_group_{impl}"]["examples_per_s"]
  return out


def markdown(res: dict) -> str:
  lines = ["# Long series: throughput of each stage against T", "",
           f"`{res['command']}`", "",
           f"{res['device']}, {res['cpu_count']} CPUs, load average before "
           f"{res['load_avg_before'][0]:.2f}, after {res['load_avg_after'][0]:.2f}. Throughputs "
           "(examples or samples per second) with the ratio T = 24 / T (how many times slower; "
           "T / 24 is the length ratio).", ""]
  ts = sorted(res["T"], key=int)
  for c in res["Cs"]:
    names = list(flat(res["T"][ts[0]][f"C{c}"]).keys())
    names += [k for t in ts for k in flat(res["T"][t][f"C{c}"]) if k not in names]
    lines += [f"## C = {c}", "", "| stage | " + " | ".join(f"T = {t}" for t in ts) + " |",
              "|---|" + "---|" * len(ts)]
    for name in names:
      cells = []
      for t in ts:
        v = res["T"][t][f"C{c}"].get("flat", {}).get(name)
        r = res["T"][t][f"C{c}"].get("slowdown_vs_T24", {}).get(name)
        cells.append("n/a" if v is None else f"{v:,.1f}" + ("" if r is None else f" ({r:.1f}x)"))
      lines.append(f"| {name} | " + " | ".join(cells) + " |")
    tn = [res["T"][t][f"C{c}"]["timesnet_group"] for t in ts]
    lines += ["", "TimesNet periods / path / XLA FLOPs per training example: " + "; ".join(
        f"T = {t}: {r['periods']} {r['impl']} {r['grad_flops_per_example'] / 1e6:.1f} M"
        for t, r in zip(ts, tn)), ""]
  return "\n".join(lines) + "\n"


def main():
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--Ts", default="24,96,288")
  ap.add_argument("--Cs", default="3,7")
  ap.add_argument("--group", type=int, default=12, help="models trained together (vmapped)")
  ap.add_argument("--before-Ts", default="24,288",
                  help="T at which the TimesNet group also runs an earlier path")
  ap.add_argument("--before-Cs", default="3", help="C at which the earlier path runs")
  ap.add_argument("--before-impl", default="unfold", choices=("unfold", "conv"),
                  help="the earlier TimesBlock path timed at --before-Ts x --before-Cs")
  ap.add_argument("--n", type=int, default=512, help="training examples (classifiers)")
  ap.add_argument("--cache-n", type=int, default=512, help="guidance-cache examples")
  ap.add_argument("--sample-batch", type=int, default=32)
  ap.add_argument("--sample-steps", type=int, default=20)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                "bench_long_series"))
  args = ap.parse_args()
  args.Ts = [int(t) for t in args.Ts.split(",")]
  args.Cs = [int(c) for c in args.Cs.split(",")]
  args.before_Ts = [int(t) for t in args.before_Ts.split(",") if t]
  args.before_Cs = [int(c) for c in args.before_Cs.split(",") if c]
  if 24 not in args.Ts:
    raise SystemExit("--Ts must include 24 (the reference of every ratio).")
  cfg = experiment_config(load_config("default"))
  eicu_unet = experiment_config(load_config("eicu_mortality")).unet
  res = {"command": "python benchmarks/bench_long_series.py " + " ".join(
      f"--{k.replace('_', '-')}={','.join(map(str, v)) if isinstance(v, list) else v}"
      for k, v in vars(args).items() if k != "out"),
         "device": str(jax.devices()[0]), "platform": platform.platform(),
         "cpu_count": os.cpu_count(), "load_avg_before": os.getloadavg(), "Cs": args.Cs,
         "unets": {"default": cfg.unet.to_dict(), "long": eicu_unet.to_dict()}, "T": {}}
  t_start = time.perf_counter()
  for t in sorted(args.Ts):
    res["T"][str(t)] = {}
    for c in args.Cs:
      row = bench_t_c(cfg, eicu_unet, t, c, args)
      row["flat"] = flat(row)
      res["T"][str(t)][f"C{c}"] = row
  for t in res["T"]:
    for c in args.Cs:
      row, ref = res["T"][t][f"C{c}"], res["T"]["24"][f"C{c}"]["flat"]
      row["slowdown_vs_T24"] = {k: ref[k] / v for k, v in row["flat"].items() if k in ref}
    res["T"][t].update(res["T"][t][f"C{max(args.Cs)}"]["flat"])  # the flat shape
  res["load_avg_after"] = os.getloadavg()
  res["wall_s"] = time.perf_counter() - t_start
  tio.write_json(args.out + ".json", res)
  tio.write_text(args.out + ".md", markdown(res))
  print(f"wrote {args.out}.json and .md ({res['wall_s']:.0f} s)")


if __name__ == "__main__":
  main()
