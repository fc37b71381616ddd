"""Benchmark of influence guidance: cache build, influence gradients, guided DDIM.

Measures, in one run on the current backend:
  * the float32 matmul peak (FLOP/s) for reference,
  * the guidance-cache build time for N guidance samples (first call incl. compile, then warm),
  * DDIM sampling at batch B: unguided vs each guidance variant, samples/s, overhead ratio
    guided/unguided, and achieved FLOP/s from XLA's cost analysis of the compiled sampler.
    The sampler is plain DDIM (the step's own sigma, no x0 calibration): the analytic variance
    and the calibration need fits to a trained model and cost one DCT per step, guided or not.

  python benchmarks/bench_guidance.py --config=default            # default U-Net + GRU(64)
  python benchmarks/bench_guidance.py --config=paper              # paper U-Net + GRU(256)
  python benchmarks/bench_guidance.py --batch=32 --steps=5 --tag=quick   # a short CPU check

Writes benchmarks/results/bench_guidance_<tag>.{json,md}. Models are randomly initialised (speed
does not depend on training); data are random normal with an 8% positive rate.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from tardiff_jax import io as tio
from tardiff_jax.config import experiment_config, load_config
from tardiff_jax.influence import build_guidance_cache, make_gparams, make_influence_guidance
from tardiff_jax.models.classifier import make_classifier
from tardiff_jax.models.timesnet import timesnet_periods
from tardiff_jax.models.unet1d import init_params, make_denoiser
from tardiff_jax.sampling import SamplerConfig, StepInfo, make_sampler

HERE = os.path.dirname(os.path.abspath(__file__))


def _load_config(name: str):
  """The typed config of configs/default.py (`paper`: its paper variant)."""
  return experiment_config(load_config("default:paper" if name == "paper" else "default"))


def _time(fn, *args, repeats: int = 2):
  """(first-call seconds incl. compile, best warm seconds)."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - t0
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t0)
  return first, best


def matmul_peak(n: int = 2048) -> float:
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  _, best = _time(f, a, repeats=3)
  return 2.0 * n ** 3 / best


def _flops_of(compiled) -> float | None:
  """FLOPs of a compiled executable from XLA's cost analysis (None if unavailable)."""
  try:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0]
    return float(cost["flops"])
  except Exception:  # Cost analysis is best effort (backend dependent).
    return None


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser()
  ap.add_argument("--config", default="default", choices=("default", "paper"))
  ap.add_argument("--batch", type=int, default=256)
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--cache_n", type=int, default=2000)
  ap.add_argument("--variants", default="dot,cosine,batch,classifier")
  ap.add_argument("--classifier", default="", choices=("", "timesnet", "gru"),
                  help="Override the config's guidance classifier (TimesNet is slow on a CPU).")
  ap.add_argument("--tag", default="")
  ap.add_argument("--cache_batch", type=int, default=0,
                  help="guidance examples per cache batch (0 = the config's cache_batch_size)")
  ap.add_argument("--cache_only", action="store_true", help="time the cache build only")
  args = ap.parse_args(argv)
  cfg = _load_config(args.config)
  T, C, K = 24, 7, 2
  rng = np.random.default_rng(0)
  x = rng.normal(size=(args.cache_n, T, C)).astype(np.float32)
  y = (rng.random(args.cache_n) < 0.08).astype(np.int32)
  periods = timesnet_periods(x, cfg.classifier.timesnet.top_k)
  ccfg = cfg.classifier.spec(K, T, C, model=args.classifier or None, periods=periods)
  clf = make_classifier(ccfg)
  cparams = clf.init(jax.random.PRNGKey(1))
  ucfg = dataclasses.replace(cfg.unet, num_classes=K)
  _, apply_fn = make_denoiser(ucfg)
  uparams = init_params(ucfg, jax.random.PRNGKey(2), T, C)
  schedule = cfg.diffusion.make_schedule()
  res = {"config": args.config, "classifier": ccfg.model, "backend": jax.default_backend(),
         "devices": [str(d) for d in jax.devices()], "cpu_count": os.cpu_count(),
         "platform": platform.platform(), "batch": args.batch, "steps": args.steps,
         "cache_n": args.cache_n}
  res["matmul_flops_per_s"] = matmul_peak()
  print(f"matmul peak {res['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s", flush=True)

  bs = args.cache_batch or int(cfg.guidance.cache_batch_size)
  t0 = time.perf_counter()
  cache = build_guidance_cache(clf.loss_fn, cparams, x, y, batch_size=bs)
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  cache = build_guidance_cache(clf.loss_fn, cparams, x, y, batch_size=bs)
  warm = time.perf_counter() - t0
  res["cache"] = {"n": args.cache_n, "batch_size": bs, "first_s": first, "warm_s": warm}
  print(f"cache {args.cache_n}: first {first:.2f}s warm {warm:.2f}s", flush=True)
  if args.cache_only:
    t0 = time.perf_counter()
    build_guidance_cache(clf.loss_fn, cparams, x, y, batch_size=bs)
    res["cache"]["warm2_s"] = time.perf_counter() - t0
    tag = args.tag or f"cache_{args.config}_{ccfg.model}_b{bs}"
    tio.write_json(os.path.join(HERE, "results", f"bench_guidance_{tag}.json"), res)
    print(f"cache {args.cache_n} (batch {bs}): warm {warm:.2f}s / {res['cache']['warm2_s']:.2f}s")
    return res

  sconfig = SamplerConfig(sampler="ddim", num_steps=args.steps, eta=1.0, variance="ddim",
                          calibrate_x0=False)
  ys = jnp.asarray(np.arange(args.batch) % K, jnp.int32)
  shape = (args.batch, T, C)
  key = jax.random.PRNGKey(3)
  # Per-step FLOP counts (XLA cost analysis of ONE denoiser call and ONE guidance call at this
  # batch), times the number of steps: a count that does not depend on how XLA costs a scan.
  xs = jnp.zeros(shape, jnp.float32)
  ts = jnp.full((args.batch,), 100, jnp.int32)
  fwd_flops = _flops_of(jax.jit(apply_fn).lower(uparams, xs, ts, ys).compile())
  res["unet_forward_flops_per_sample"] = None if fwd_flops is None else fwd_flops / args.batch
  rows = []
  base = None
  for variant in ["unguided"] + [v for v in args.variants.split(",") if v]:
    fn = None if variant == "unguided" else make_influence_guidance(clf.loss_fn, variant)
    sample = jax.jit(make_sampler(apply_fn, schedule, sconfig, K, guidance_fn=fn),
                     static_argnames="shape")
    gp = None if fn is None else make_gparams(cparams, cache.G, 1.0)
    t0 = time.perf_counter()
    compiled = sample.lower(uparams, gp, key, ys, shape=shape).compile()  # Compile once (AOT).
    compile_s = time.perf_counter() - t0
    first, best = _time(lambda c=compiled, g=gp: c(uparams, g, key, ys), repeats=1)
    first += compile_s
    flops = _flops_of(compiled)
    step_flops = fwd_flops
    if fn is not None and fwd_flops is not None:
      info = StepInfo(index=jnp.int32(0), t=jnp.int32(100), t_prev=jnp.int32(90),
                      alpha_bar=jnp.float32(0.5), alpha_bar_prev=jnp.float32(0.6),
                      sigma=jnp.float32(0.1), x0_fn=lambda v: v)
      g_flops = _flops_of(jax.jit(lambda g, a, b, c, f=fn, i=info: f(g, a, b, c, i)).lower(
          gp, xs, xs, ys).compile())
      step_flops = None if g_flops is None else fwd_flops + g_flops
    counted = None if step_flops is None else step_flops * args.steps
    row = {"variant": variant, "first_s": first, "warm_s": best,
           "counted_flops": counted,
           "counted_flops_per_s": None if counted is None else counted / best,
           "ms_per_sample": 1e3 * best / args.batch, "samples_per_s": args.batch / best,
           "flops": flops, "achieved_flops_per_s": None if flops is None else flops / best}
    if variant == "unguided":
      base = best
    row["overhead_vs_unguided"] = best / base
    rows.append(row)
    print(f"{variant:>10}: {row['ms_per_sample']:.2f} ms/sample, overhead {best / base:.2f}x, "
          f"first {first:.1f}s", flush=True)
  res["sampling"] = rows
  tag = args.tag or f"{args.config}_{ccfg.model}_{jax.default_backend()}"
  out = os.path.join(HERE, "results", f"bench_guidance_{tag}")
  tio.write_json(out + ".json", res)
  peak = res["matmul_flops_per_s"]
  lines = [f"# bench_guidance ({tag})", "",
           f"config `{args.config}` (classifier {ccfg.model}), backend {res['backend']}, "
           f"{res['cpu_count']} CPUs; DDIM-{args.steps}, batch {args.batch}; matmul peak "
           f"{peak / 1e9:.1f} GFLOP/s.", "",
           f"Cache for {args.cache_n} guidance samples (batch {bs}): first call "
           f"{res['cache']['first_s']:.2f} s (incl. compile), warm {res['cache']['warm_s']:.2f} s.",
           "", "| variant | ms/sample | samples/s | overhead | GFLOP/sample (steps x per-step "
           "count) | % of matmul peak | GFLOP/sample (scan cost analysis) |",
           "|---|---|---|---|---|---|---|"]
  for r in rows:
    gf = "n/a" if r["flops"] is None else f"{r['flops'] / args.batch / 1e9:.3f}"
    cf = "n/a" if r["counted_flops"] is None else f"{r['counted_flops'] / args.batch / 1e9:.2f}"
    pct = "n/a" if r["counted_flops_per_s"] is None else \
        f"{100 * r['counted_flops_per_s'] / peak:.0f}%"
    lines.append(f"| {r['variant']} | {r['ms_per_sample']:.2f} | {r['samples_per_s']:.1f} | "
                 f"{r['overhead_vs_unguided']:.2f}x | {cf} | {pct} | {gf} |")
  lines += ["", "Per-step count: XLA cost analysis of one denoiser forward and one guidance call "
            "at this batch, times the number of steps (the sampler's own cost analysis may count "
            "the scan body once, so its column is a lower bound). The GRU classifier is itself a "
            "scan over time, so the guidance part of the per-step count is also a lower bound: the "
            "% of peak of guided variants understates the work done."]
  tio.write_text(out + ".md", "\n".join(lines) + "\n")
  print("wrote", out + ".{json,md}")
  return res


if __name__ == "__main__":
  main(sys.argv[1:])
