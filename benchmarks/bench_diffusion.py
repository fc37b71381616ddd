"""Benchmark of the 1D U-Net denoiser: params, FLOPs, forward / training-step / DDIM-20 timings.

For the `paper` and default U-Net configs at batch 256, T=24, C=7 (float32, this machine):
parameter count, FLOPs per forward (XLA cost analysis), forward time, one training step (forward,
L1 eps loss, backward, AdamW, EMA; alone in a call, and per step of a call of
`train_diffusion.steps_per_call` steps as the trainer runs them), DDIM-20 unguided sampling, and
the achieved FLOP/s as a fraction of a large float32 matmul's FLOP/s measured in the same run (the
fraction travels between noisy machines, seconds do not).
Writes benchmarks/results/bench_diffusion.{json,md}.

  python benchmarks/bench_diffusion.py [--quick] [--configs paper,default] [--precision default]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from tardiff_jax import io as tio
from tardiff_jax.config import experiment_config, load_config
from tardiff_jax.diffusion import eps_loss
from tardiff_jax.models import UNet1D, count_params, init_params, make_denoiser
from tardiff_jax.sampling import SamplerConfig, make_sampler
from tardiff_jax.training.diffusion_trainer import (
    DiffusionTrainConfig,
    init_state,
    make_optimizer,
    make_train_step,
    make_train_steps,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_config(variant):
  """The typed config of configs/default.py[:variant]."""
  return experiment_config(load_config("default" + (f":{variant}" if variant else "")))


def _time(fn, repeats):
  """Median wall time of `fn()` (which blocks) over `repeats` calls after one warm-up."""
  fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), times


def _flops(compiled):
  ca = compiled.cost_analysis()
  if isinstance(ca, (list, tuple)):
    ca = ca[0]
  return float(ca.get("flops", float("nan"))) if ca else float("nan")


def matmul_flops_per_s(n, repeats):
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
  f = jax.jit(lambda a, b: a @ b)
  med, _ = _time(lambda: f(a, b).block_until_ready(), repeats)
  return 2.0 * n ** 3 / med


def bench_config(name, cfg, batch, seq_len, channels, repeats, sample_repeats, do_sample):
  num_classes = 2
  unet = dataclasses.replace(cfg.unet, num_classes=num_classes)
  module, apply_fn = make_denoiser(unet)
  params = init_params(unet, jax.random.PRNGKey(0), seq_len, channels)
  # Zero-initialised output layers make eps = 0 at init; perturb so nothing can be skipped.
  params = jax.tree_util.tree_map(lambda p: p + 0.01, params)
  x = jax.random.normal(jax.random.PRNGKey(1), (batch, seq_len, channels), jnp.float32)
  t = jnp.arange(batch, dtype=jnp.int32) % 200
  y = jnp.arange(batch, dtype=jnp.int32) % num_classes
  res = {"config": name, "unet": unet.to_dict(), "params": count_params(params)}

  t0 = time.perf_counter()
  fwd = jax.jit(apply_fn).lower(params, x, t, y).compile()
  res["forward_compile_s"] = time.perf_counter() - t0
  flops = _flops(fwd)
  res["forward_flops_per_sample"] = flops / batch
  res["forward_s"], res["forward_all_s"] = _time(
      lambda: fwd(params, x, t, y).block_until_ready(), repeats)

  train_cfg = DiffusionTrainConfig(batch_size=batch, num_steps=10_000, learning_rate=1e-4,
                                   warmup_steps=100, weight_decay=0.01,
                                   steps_per_call=cfg.train_diffusion.steps_per_call)
  # The reference code's training target: eps with the L1 loss (the config's schedule).
  diff_cfg = dataclasses.replace(cfg.diffusion, loss="l1", prediction="eps")
  loss_fn = lambda apply, p, schedule, x0, yb, m, key: eps_loss(
      apply, p, schedule, x0, yb, m, key, loss=diff_cfg.loss, prediction=diff_cfg.prediction)
  step = make_train_step(UNet1D(unet), make_optimizer(train_cfg), diff_cfg.make_schedule(),
                         train_cfg, batch, loss_fn)
  state = init_state(unet, make_optimizer(train_cfg), 0, seq_len, channels)
  mask = jnp.ones_like(x, bool)
  t0 = time.perf_counter()
  lowered = step.lower(state, x, y, mask)
  compiled_step = lowered.compile()
  res["train_compile_s"] = time.perf_counter() - t0
  res["train_step_flops"] = _flops(compiled_step)
  box = [state]

  def one_step():
    box[0], loss = compiled_step(box[0], x, y, mask)
    loss.block_until_ready()

  res["train_step_s"], res["train_step_all_s"] = _time(one_step, repeats)

  # As the trainer runs them: train_cfg.steps_per_call steps per compiled call (one lax.scan),
  # timed per step.
  k = train_cfg.steps_per_call
  steps = make_train_steps(UNet1D(unet), make_optimizer(train_cfg), diff_cfg.make_schedule(),
                           train_cfg, batch, loss_fn)
  t0 = time.perf_counter()
  compiled_steps = steps.lower(box[0], x, y, mask, k).compile()
  res["train_steps_compile_s"] = time.perf_counter() - t0
  res["steps_per_call"] = k

  def k_steps():
    box[0], losses = compiled_steps(box[0], x, y, mask, k)
    losses.block_until_ready()

  med, all_s = _time(k_steps, repeats)
  res["train_step_in_call_s"], res["train_step_in_call_all_s"] = med / k, [t / k for t in all_s]

  if do_sample:
    # Plain DDIM-20 as the reference code samples (the step's own sigma, no x0 calibration:
    # those need fits to a trained model, and add one DCT per step).
    scfg = SamplerConfig(sampler="ddim", num_steps=20, eta=1.0, cfg_scale=1.0, variance="ddim",
                         calibrate_x0=False)
    sampler = make_sampler(apply_fn, diff_cfg.make_schedule(), scfg, num_classes)
    sample = jax.jit(sampler, static_argnames="shape")
    shape = (batch, seq_len, channels)
    t0 = time.perf_counter()
    sample(params, None, jax.random.PRNGKey(2), y, shape).block_until_ready()
    res["ddim20_compile_s"] = time.perf_counter() - t0
    res["ddim20_s"], res["ddim20_all_s"] = _time(
        lambda: sample(params, None, jax.random.PRNGKey(3), y, shape).block_until_ready(),
        sample_repeats)
    res["ddim20_samples_per_s"] = batch / res["ddim20_s"]
  return res


def _loadavg():
  try:
    return list(os.getloadavg())
  except OSError:
    return None


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="Fewer repeats (noisier).")
  p.add_argument("--configs", default="paper,default", help="Comma-separated: paper, default.")
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--precision", default="default",
                 help="jax_default_matmul_precision: default, high, highest.")
  p.add_argument("--no-sample", action="store_true", help="Skip the DDIM-20 timing.")
  p.add_argument("--matmul-n", type=int, default=2048)
  p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "bench_diffusion"))
  args = p.parse_args(argv)
  jax.config.update("jax_default_matmul_precision", args.precision)
  repeats = 2 if args.quick else 5
  sample_repeats = 1 if args.quick else 3
  load_before = _loadavg()
  results = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                         "devices": [str(d) for d in jax.devices()], "jax": jax.__version__,
                         "loadavg_before": load_before},
             "settings": {"batch": args.batch, "T": 24, "C": 7, "precision": args.precision,
                          "repeats": repeats, "sample_repeats": sample_repeats},
             "configs": {}}
  peak = matmul_flops_per_s(args.matmul_n, repeats + 1)
  results["matmul_flops_per_s"] = peak
  print(f"matmul {args.matmul_n}^2 float32: {peak / 1e9:.1f} GFLOP/s", flush=True)
  for name in args.configs.split(","):
    cfg = _load_config("paper" if name == "paper" else None)
    r = bench_config(name, cfg, args.batch, 24, 7, repeats, sample_repeats, not args.no_sample)
    fwd_fs = r["forward_flops_per_sample"] * args.batch / r["forward_s"]
    r["forward_flop_fraction_of_matmul"] = fwd_fs / peak
    r["train_flop_fraction_of_matmul"] = r["train_step_flops"] / r["train_step_s"] / peak
    results["configs"][name] = r
    print({k: v for k, v in r.items() if not k.endswith("all_s") and k != "unet"}, flush=True)
  results["machine"]["loadavg_after"] = _loadavg()
  tio.write_json(args.out + ".json", results)
  tio.write_text(args.out + ".md", _markdown(results))
  print(_markdown(results))


def _markdown(res):
  lines = ["# bench_diffusion", "",
           f"Machine: {res['machine']['cpu_count']} CPUs, {res['machine']['devices']}, "
           f"jax {res['machine']['jax']}; load average before {res['machine']['loadavg_before']}, "
           f"after {res['machine']['loadavg_after']}.",
           f"float32 matmul peak in this run: {res['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s; "
           f"batch {res['settings']['batch']}, T=24, C=7, precision "
           f"{res['settings']['precision']}, median of {res['settings']['repeats']} repeats.", "",
           "| config | params | MFLOP/sample fwd | forward s | fwd % of matmul | train step s "
           "| train % of matmul | train step s, K per call | DDIM-20 s | samples/s |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for name, r in res["configs"].items():
    lines.append(
        f"| {name} | {r['params'] / 1e6:.2f} M | {r['forward_flops_per_sample'] / 1e6:.0f} | "
        f"{r['forward_s']:.3f} | {100 * r['forward_flop_fraction_of_matmul']:.0f}% | "
        f"{r['train_step_s']:.3f} | {100 * r['train_flop_fraction_of_matmul']:.0f}% | "
        + (f"{r['train_step_in_call_s']:.3f} (K={r['steps_per_call']}) | "
           if "train_step_in_call_s" in r else "- | ") +
        f"{r.get('ddim20_s', float('nan')):.2f} | "
        f"{r.get('ddim20_samples_per_s', float('nan')):.1f} |")
  lines += ["", "The authors' PyTorch code on this machine, side by side with the `paper` U-Net: "
            "bench_vs_reference.md (benchmarks/bench_vs_reference.py)."]
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  sys.exit(main())
