"""Side-by-side speed of our `paper` U-Net and the authors' PyTorch code, on this CPU.

Same batch, same steps, float32, one run after the other (ours first, then the reference in a
subprocess), the same number of cores on both sides (`--threads`); `--rounds=N` alternates the
sides N times and reports each stage's median over the rounds (this machine's timings drift by
10-15% from one run to the next). Stages:
  forward      one denoiser call, eval mode (batch B, T=24, C=7);
  train_step   forward + backward + AdamW update + EMA on the L1 eps diffusion loss (ours: per
               step of one compiled call of `train_diffusion.steps_per_call` steps, as our
               trainer runs them; the time of one step alone in a call is in the JSON);
  ddim         unguided DDIM (`--steps`, eta 1: the reference's own DDIMSampler);
  guided_ddim  influence-guided DDIM: the reference's GuideDDIMSampler with its GradDotCalculator
               over its guidance GRU (bidirectional, hidden 256, 2 layers); ours: the same
               batch-level score (`influence` variant "batch") with our GRU of the same size.
Reported per stage: seconds (median after one warm-up), ms per sample, the speed-up, the FLOP
count per sample and the achieved FLOP/s of each side, against float32 matmul peaks measured in
the same run (jax, numpy and torch). FLOPs: ours from XLA's cost analysis (forward, training
step; sampling = steps x (forward + one guidance call), with the GRU's time scan unrolled for
the count, since XLA counts a loop body once); the reference's with torch's FlopCounterMode
(matmul/conv/attention ops only). The achieved FLOP/s of both sides use OUR count (the same
network's maths), the reference's own count is given beside it.

The reference side (benchmarks/reference_torch_side.py) runs in a Python with torch, outside the
project (torch is not a project dependency), e.g. a throwaway venv:

  python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch numpy einops omegaconf \\
      tqdm pillow scipy
  python benchmarks/bench_vs_reference.py --torch_python=/tmp/torchenv/bin/python --rounds=3

It builds the reference's U-Net from its own public code (exported from its git mirror with
`git show`, `--reference_git_dir`) and configs/base/mimic_icustay_base.yaml with random weights.
Writes benchmarks/results/bench_vs_reference.{json,md} (`--out`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
STAGES = ("forward", "train_step", "ddim", "guided_ddim")
REFERENCE_GIT_DIR = "/work/.mirror/devin-21+TarDiff/repo"
T, C, K = 24, 7, 2  # The reference's MIMIC ICU-stay shape and its two classes.


def parse(argv=None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--batch", type=int, default=256)
  ap.add_argument("--steps", type=int, default=20, help="DDIM steps (both samplers)")
  ap.add_argument("--repeats", type=int, default=3, help="timed forward / training-step calls "
                  "(median; after one warm-up)")
  ap.add_argument("--sample_repeats", type=int, default=1, help="timed sampler calls (median; "
                  "after one warm-up)")
  ap.add_argument("--threads", type=int, default=0, help="cores for BOTH sides: this process "
                  "and the reference subprocess are pinned to the first N cores of the current "
                  "affinity, torch.set_num_threads(N); 0 = all of them")
  ap.add_argument("--torch_python", default="/tmp/torchenv/bin/python",
                  help="a Python with torch for the reference side")
  ap.add_argument("--reference_git_dir", default=REFERENCE_GIT_DIR)
  ap.add_argument("--reference_commit", default="HEAD")
  ap.add_argument("--sides", default="ours,reference", help="which sides to run, in this order")
  ap.add_argument("--cache_n", type=int, default=64, help="random guidance rows behind the "
                  "cached gradient (one-off, not timed in the sampler)")
  ap.add_argument("--matmul_n", type=int, default=2048)
  ap.add_argument("--rounds", type=int, default=1, help="run the sides this many times, "
                  "alternating (ours, reference, ours, ...); each stage's time is the median "
                  "over the rounds")
  ap.add_argument("--note", default="", help="free text put in the report's header")
  ap.add_argument("--out", default=os.path.join(HERE, "results", "bench_vs_reference"),
                  help="output path without extension (.json and .md are written)")
  return ap.parse_args(argv)


def pin_threads(threads: int) -> dict:
  """Pins this process (and so its children) to `threads` cores; before jax starts."""
  cpus = sorted(os.sched_getaffinity(0))
  if threads > 0:
    if threads > len(cpus):
      raise ValueError(f"--threads={threads} but only {len(cpus)} cores are available.")
    cpus = cpus[:threads]
    os.sched_setaffinity(0, cpus)
  if len(cpus) == 1:  # XLA's CPU thread pools follow the affinity; also no Eigen threading.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_cpu_multi_thread_eigen=false").strip()
  return {"threads": len(cpus), "cpus": cpus}


def _loadavg():
  try:
    return [round(v, 2) for v in os.getloadavg()]
  except OSError:
    return None


def _busy_fraction(seconds: float = 2.0):
  """The share of this machine's CPU time spent busy (not idle or waiting on I/O) over the next
  `seconds`, from /proc/stat; None where there is none. Taken just before a side runs, while
  this process idles, it measures other processes; the load average, a decaying 1-minute mean,
  would still count the side that ran before."""
  def sample():
    with open("/proc/stat") as f:
      v = [int(x) for x in f.readline().split()[1:]]
    return sum(v), v[3] + v[4]

  try:
    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
  except (OSError, ValueError, IndexError):
    return None
  return round(1.0 - (idle1 - idle0) / max(total1 - total0, 1), 3)


def _as_list(v) -> list:
  return v if isinstance(v, list) else [v]


def _median_rounds(sides: list) -> dict | None:
  """One side's result from its `--rounds` runs: the first run's, with each stage's time the
  median over the runs (`round_s` keeps them all)."""
  if not sides:
    return None
  out = json.loads(json.dumps(sides[0]))
  for name, st in out["stages"].items():
    st["round_s"] = [r["stages"][name]["s"] for r in sides]
    first, st["s"] = st["s"], statistics.median(st["round_s"])
    st["ms_per_sample"] *= st["s"] / first
    if "one_per_call_s" in st:  # Our training step alone in a call.
      st["one_per_call_round_s"] = [r["stages"][name]["one_per_call_s"] for r in sides]
      st["one_per_call_s"] = statistics.median(st["one_per_call_round_s"])
  out["busy_before"] = [r.get("busy_before") for r in sides]
  return out


def _flops_unrolled(fn, *args) -> float:
  """XLA cost-analysis FLOPs of jit(fn)(*args) with every lax.scan fully unrolled (XLA counts a
  loop body once); for counting only, the unrolled program is never run."""
  import bench_diffusion as bd  # noqa: PLC0415
  import jax  # noqa: PLC0415

  orig = jax.lax.scan
  jax.lax.scan = functools.partial(orig, unroll=True)
  try:
    return bd._flops(jax.jit(fn).lower(*args).compile())
  finally:
    jax.lax.scan = orig


def run_ours(args) -> dict:
  """Our `paper` U-Net (configs/default.py:paper) and GRU: the four stages."""
  import bench_diffusion as bd  # noqa: PLC0415
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  import tardiff_jax.influence as tinf  # noqa: PLC0415
  from tardiff_jax.models import init_params, make_denoiser  # noqa: PLC0415
  from tardiff_jax.models.classifier import make_classifier  # noqa: PLC0415
  from tardiff_jax.sampling import SamplerConfig, StepInfo, make_sampler  # noqa: PLC0415

  B, S = args.batch, args.steps  # noqa: N806
  out = {"busy_before": _busy_fraction(), "load_before": _loadavg(), "jax": jax.__version__,
         "devices": [str(d) for d in jax.devices()]}
  out["matmul_flops_per_s"] = bd.matmul_flops_per_s(args.matmul_n, 3)
  a = np.random.default_rng(0).standard_normal((args.matmul_n, args.matmul_n), np.float32)
  med, _ = bd._time(lambda: a @ a, 3)
  out["numpy_matmul_flops_per_s"] = 2.0 * args.matmul_n ** 3 / med
  cfg = bd._load_config("paper")
  # Forward and training step: bench_diffusion's (eps prediction and the L1 loss, as the
  # reference trains; AdamW + EMA; parameters perturbed off the zero init).
  r = bd.bench_config("paper", cfg, B, T, C, args.repeats, args.sample_repeats, False)
  out["params"] = r["params"]
  out["unet"] = r["unet"]
  fwd_flops = r["forward_flops_per_sample"] * B
  stages = {
      "forward": {"s": r["forward_s"], "all_s": r["forward_all_s"], "flops": fwd_flops,
                  "compile_s": r["forward_compile_s"]},
      # Per step as the trainer runs them (steps_per_call steps in one compiled call); the
      # step alone in a call is kept beside it.
      "train_step": {"s": r["train_step_in_call_s"], "all_s": r["train_step_in_call_all_s"],
                     "flops": r["train_step_flops"], "compile_s": r["train_steps_compile_s"],
                     "steps_per_call": r["steps_per_call"],
                     "one_per_call_s": r["train_step_s"],
                     "one_per_call_all_s": r["train_step_all_s"]}}
  print(f"ours forward {r['forward_s']:.3f} s, train step {r['train_step_in_call_s']:.3f} s "
        f"({r['steps_per_call']} per call; {r['train_step_s']:.3f} s alone)", flush=True)

  # Sampling, as bench_guidance: plain DDIM (the step's own sigma, no x0 calibration), eta 1,
  # no classifier-free guidance (one denoiser call per step, as the reference).
  unet = dataclasses.replace(cfg.unet, num_classes=K)
  _, apply_fn = make_denoiser(unet)
  params = jax.tree_util.tree_map(lambda p: p + 0.01,
                                  init_params(unet, jax.random.PRNGKey(0), T, C))
  schedule = dataclasses.replace(cfg.diffusion, loss="l1", prediction="eps").make_schedule()
  scfg = SamplerConfig(sampler="ddim", num_steps=S, eta=1.0, cfg_scale=1.0, variance="ddim",
                       calibrate_x0=False)
  y = jnp.arange(B, dtype=jnp.int32) % K
  shape = (B, T, C)
  key = jax.random.PRNGKey(3)
  rng = np.random.default_rng(0)
  gx = rng.normal(size=(args.cache_n, T, C)).astype(np.float32)
  gy = (rng.random(args.cache_n) < 0.08).astype(np.int32)
  clf = make_classifier(cfg.classifier.spec(K, T, C, model="gru"))
  cparams = clf.init(jax.random.PRNGKey(1))
  cache = tinf.build_guidance_cache(clf.loss_fn, cparams, gx, gy,
                               batch_size=min(args.cache_n, int(cfg.guidance.cache_batch_size)))
  guide = tinf.make_influence_guidance(clf.loss_fn, "batch")  # The reference's batch-level score.
  gp = tinf.make_gparams(cparams, cache.G, 1.0)
  out["classifier"] = {"model": "gru", "hidden": cfg.classifier.gru.hidden,
                       "num_layers": cfg.classifier.gru.num_layers,
                       "params": int(sum(np.size(v) for v in jax.tree_util.tree_leaves(cparams)))}
  info = StepInfo(index=jnp.int32(0), t=jnp.int32(100), t_prev=jnp.int32(90),
                  alpha_bar=jnp.float32(0.5), alpha_bar_prev=jnp.float32(0.6),
                  sigma=jnp.float32(0.1), x0_fn=lambda v: v)
  xs = jnp.zeros(shape, jnp.float32)
  g_flops = _flops_unrolled(lambda g, a, b, c: guide(g, a, b, c, info), gp, xs, xs, y)
  out["guidance_call_flops"] = g_flops
  for name, fn, g in (("ddim", None, None), ("guided_ddim", guide, gp)):
    sample = jax.jit(make_sampler(apply_fn, schedule, scfg, K, guidance_fn=fn),
                     static_argnames="shape")
    t0 = time.perf_counter()
    compiled = sample.lower(params, g, key, y, shape=shape).compile()
    compile_s = time.perf_counter() - t0
    med, all_s = bd._time(lambda c=compiled, g=g: c(params, g, key, y).block_until_ready(),
                          args.sample_repeats)
    per_step = fwd_flops + (0.0 if fn is None else g_flops)
    stages[name] = {"s": med, "all_s": all_s, "flops": S * per_step, "compile_s": compile_s}
    print(f"ours {name} {med:.3f} s", flush=True)
  for s in stages.values():
    s["ms_per_sample"] = 1e3 * s["s"] / B
  out["stages"] = stages
  out["load_after"] = _loadavg()
  return out


def run_reference(args, threads: int) -> dict:
  """The reference side in `--torch_python` (one JSON line on its stdout)."""
  cmd = [args.torch_python, os.path.join(HERE, "reference_torch_side.py"),
         f"--batch={args.batch}", f"--steps={args.steps}", f"--repeats={args.repeats}",
         f"--sample_repeats={args.sample_repeats}", f"--threads={threads}",
         f"--cache_n={args.cache_n}", f"--matmul_n={args.matmul_n}",
         f"--git_dir={args.reference_git_dir}", f"--commit={args.reference_commit}"]
  env = dict(os.environ, TQDM_DISABLE="1")
  env.pop("XLA_FLAGS", None)
  busy_before, load_before = _busy_fraction(), _loadavg()
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE)
  wall = time.perf_counter() - t0
  lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
  if proc.returncode != 0 or not lines:
    sys.stderr.write(proc.stderr[-6000:])
    raise RuntimeError(f"reference side failed (exit {proc.returncode}): {' '.join(cmd)}")
  res = json.loads(lines[-1])
  res.update(command=cmd, wall_s=wall, busy_before=busy_before, load_before=load_before,
             load_after=_loadavg())
  return res


def combine(args, pinned, ours, ref) -> dict:
  rows = {}
  for name in STAGES:
    o = (ours or {}).get("stages", {}).get(name)
    rf = (ref or {}).get("stages", {}).get(name)
    if o is None and rf is None:
      continue
    row = {}
    flops = o["flops"] if o else None
    if o:
      row.update(ours_s=o["s"], ours_ms_per_sample=o["ms_per_sample"],
                 ours_flops_per_s=o["flops"] / o["s"], flops_per_sample=o["flops"] / args.batch,
                 ours_compile_s=o["compile_s"])
    if rf:
      row.update(reference_s=rf["s"], reference_ms_per_sample=rf["ms_per_sample"],
                 reference_driver=rf["driver"])
      if flops is not None:
        row["reference_flops_per_s"] = flops / rf["s"]
      if rf.get("flops_torch") is not None:
        row["reference_flops_per_sample_torch"] = rf["flops_torch"] / args.batch
        row["reference_flops_per_s_torch_count"] = rf["flops_torch"] / rf["s"]
    if o and rf:
      row["speedup"] = rf["s"] / o["s"]
    rows[name] = row
  res = {"settings": {"batch": args.batch, "steps": args.steps, "T": T, "C": C,
                      "rounds": args.rounds, "repeats": args.repeats,
                      "sample_repeats": args.sample_repeats,
                      "threads": pinned["threads"], "cpus": pinned["cpus"],
                      "float": "float32", "note": args.note},
         "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                     "python": platform.python_version()},
         "command": shlex.join(["python", os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
         "stages": rows, "ours": ours, "reference": ref}
  if ours and ref:
    res["params"] = {"ours": ours["params"], "reference_total": ref["params_total"],
                     "reference_used_in_forward": ref.get("params_used_in_forward"),
                     "reference_unused": ref.get("unused_params")}
  return res


def _f(v, fmt):
  return "-" if v is None else format(v, fmt)


def _gp(row, key, peak):
  """'G (P%)': row[key] in GFLOP/s and as a share of the matmul peak `peak`, or '-'."""
  if key not in row:
    return "-"
  pct = "" if not peak else f" ({100 * row[key] / peak:.0f}%)"
  return f"{row[key] / 1e9:.1f}{pct}"


def markdown(res) -> str:
  st, ours, ref = res["settings"], res["ours"], res["reference"]
  lines = ["# bench_vs_reference", ""]
  if st["note"]:
    lines += [f"**{st['note']}**", ""]
  lines += [f"`{res['command']}`", "",
            f"{res['machine']['cpu_count']} CPUs ({res['machine']['platform']}), both sides "
            f"pinned to {st['threads']} core(s); batch {st['batch']}, T={st['T']}, C={st['C']}, "
            f"DDIM-{st['steps']}, {st['float']}; median of {st['repeats']} (forward, train step) "
            f"and {st['sample_repeats']} (samplers) timed calls after one warm-up each"
            + (f"; {st['rounds']} rounds (ours, reference, ours, ...), each stage's time the "
               "median over the rounds." if st.get("rounds", 1) > 1 else ".")]
  peaks = []
  if ours:
    peaks += [f"jax {ours['matmul_flops_per_s'] / 1e9:.1f}",
              f"numpy {ours['numpy_matmul_flops_per_s'] / 1e9:.1f}"]
    lines.append(f"Ours: jax {ours['jax']}, load average {ours['load_before']} before, "
                 f"{ours['load_after']} after.")
  if ref:
    peaks.append(f"torch {ref['matmul_flops_per_s'] / 1e9:.1f}")
    lines.append(f"Reference: torch {ref['torch']} ({ref['threads']} threads), commit "
                 f"{ref['commit'][:10]} of the authors' code; load average {ref['load_before']} "
                 f"before, {ref['load_after']} after.")
  lines.append("float32 matmul peaks in this run (GFLOP/s): " + ", ".join(peaks) + ".")
  busy = [b for side in (ours, ref) if side for b in _as_list(side.get("busy_before"))
          if b is not None]
  if busy:
    lines.append("CPU busy in the 2 s before each side ran (other processes): "
                 + ", ".join(f"{100 * b:.0f}%" for b in busy) + ".")
    if max(busy) > 0.25:
      lines += ["", f"**Warning: the machine was up to {100 * max(busy):.0f}% busy before a side "
                "ran: another process shared it, so these timings are contended.**"]
  loads = [s["load_before"][0] for s in (ours, ref) if s and s.get("load_before")]
  if not busy and loads and max(loads) > 0.5 * res["machine"]["cpu_count"]:
    lines += ["", f"**Warning: load average up to {max(loads):.1f} on "
              f"{res['machine']['cpu_count']} CPUs before a side ran: another process shared the "
              "machine, so these timings are contended (torch's OpenMP threads suffer most).**"]
  jax_peak = ours["matmul_flops_per_s"] if ours else None
  torch_peak = ref["matmul_flops_per_s"] if ref else None
  lines += ["", "| stage | ours ms/sample | reference ms/sample | speed-up | MFLOP/sample (ours, "
            "XLA) | ours GFLOP/s (% of jax matmul) | reference GFLOP/s, our count (% of torch "
            "matmul) | MFLOP/sample (reference, torch count) |",
            "|---|---|---|---|---|---|---|---|"]
  for name, r in res["stages"].items():
    mf = r.get("flops_per_sample")
    mt = r.get("reference_flops_per_sample_torch")
    lines.append(
        f"| {name} | {_f(r.get('ours_ms_per_sample'), '.2f')} | "
        f"{_f(r.get('reference_ms_per_sample'), '.2f')} | {_f(r.get('speedup'), '.2f')}x | "
        f"{_f(None if mf is None else mf / 1e6, '.0f')} | "
        f"{_gp(r, 'ours_flops_per_s', jax_peak)} | "
        f"{_gp(r, 'reference_flops_per_s', torch_peak)} | "
        f"{_f(None if mt is None else mt / 1e6, '.0f')} |")
  if "params" in res:
    p = res["params"]
    unused = ", ".join(f"{k} {v:,}" for k, v in (p["reference_unused"] or {}).items())
    lines += ["", f"Parameters: ours {p['ours']:,}; the reference instantiated "
              f"{p['reference_total']:,}, of which {p['reference_used_in_forward']:,} receive a "
              f"gradient (unused: {unused}). Ours has one more label-embedding row (the null "
              "label of classifier-free guidance, 256)."]
  lines += ["", "How each side ran:"]
  if ref:
    for name, r in res["stages"].items():
      if "reference_driver" in r:
        lines.append(f"- reference {name}: {r['reference_driver']}.")
  lines += [
      "- ours: configs/default.py:paper (U-Net with the reference's spatial transformers, GRU "
      "256 x 2); forward and train step as benchmarks/bench_diffusion.py (eps prediction, L1, "
      "AdamW + EMA, jit; the train step per step of one compiled call of "
      "`train_diffusion.steps_per_call` steps, as the trainer runs them"
      + (f": {ours['stages']['train_step']['steps_per_call']} per call; one step alone in a "
         f"call takes {1e3 * ours['stages']['train_step']['one_per_call_s'] / st['batch']:.2f} "
         "ms/sample" + (" (first round)" if st.get("rounds", 1) > 1 and "one_per_call_round_s"
                        not in ours["stages"]["train_step"] else "")
         if ours and "one_per_call_s" in ours["stages"]["train_step"] else "")
      + "); samplers as benchmarks/bench_guidance.py (plain DDIM, eta 1, no x0 "
      "calibration, AOT-compiled; compile time excluded, in the JSON), guidance variant "
      "`batch` (the reference's batch-level cosine of the batch loss gradient with the cached "
      "one) on x0_hat.",
      "- FLOPs: achieved FLOP/s of both sides use our XLA count (sampling: steps x (forward + "
      "one guidance call), the GRU's scan unrolled for the count). The reference's own count "
      "(torch FlopCounterMode: matmul, conv and attention ops only, no elementwise) is the last "
      "column; for guided sampling it is larger than ours because our GRU runs the last "
      "layer's backward direction one step instead of T (only its last-step output is read)."]
  return "\n".join(lines) + "\n"


def main(argv=None):
  args = parse(argv)
  pinned = pin_threads(args.threads)
  sides = [s for s in args.sides.split(",") if s]
  if unknown := set(sides) - {"ours", "reference"}:
    raise ValueError(f"--sides: unknown {sorted(unknown)}; expected ours, reference.")
  runs = {"ours": [], "reference": []}
  for r in range(args.rounds):
    for side in sides:
      print(f"round {r + 1}/{args.rounds}: {side}", flush=True)
      runs[side].append(run_ours(args) if side == "ours" else
                        run_reference(args, pinned["threads"]))
  res = combine(args, pinned, _median_rounds(runs["ours"]), _median_rounds(runs["reference"]))
  from tardiff_jax import io as tio  # noqa: PLC0415

  tio.write_json(args.out + ".json", res)
  md = markdown(res)
  tio.write_text(args.out + ".md", md)
  print(md)
  return res


if __name__ == "__main__":
  main()
