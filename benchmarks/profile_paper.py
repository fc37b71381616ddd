"""Where the time of the `paper` U-Net goes on this CPU: forward and training gradient, by part.

Runs the reference-faithful U-Net (configs/default.py:paper, batch 256, T=24, C=7) under
`jax.profiler` with XLA's per-thunk trace events (`--xla_cpu_enable_xprof_traceme`), and sums
the thunks' times

  by kind   (what XLA made of the op: a YNNPACK fusion, i.e. a matmul with the elementwise ops
             fused around it; a plain XLA dot; a layout copy or transpose; another elementwise or
             reduction fusion; a convolution), and
  by part   (which piece of the network, from the ops' names: feed-forward matmuls, GEGLU,
             attention projections, the attention core (scores, softmax, weighted sum),
             normalisation, SiLU, convolutions, embeddings, ...),

each split into forward and backward (ops under autodiff's transpose) for the gradient. A fusion
counts towards the part of its root op (e.g. a LayerNorm fused into the next matmul counts as
that matmul; a normalisation fusion that also writes statistics for the backward counts as
normalisation). And,
without the profiler, the wall time, the user and kernel CPU time and the minor page faults
per call (getrusage) next to the size of XLA's temp buffer.
Thunk times are summed over XLA's two worker threads, so a part's share is of the summed busy
time, not of the wall time (both are reported). FLOPs: XLA's cost analysis.

  python benchmarks/profile_paper.py            # writes benchmarks/results/profile_paper.{json,md}
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_cpu_enable_xprof_traceme=true").strip()

import argparse  # noqa: E402
import collections  # noqa: E402
import dataclasses  # noqa: E402
import glob  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import bench_diffusion as bd  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from tardiff_jax import io as tio  # noqa: E402
from tardiff_jax.models import init_params, make_denoiser  # noqa: E402
from tardiff_jax.models.unet1d import UNet1D  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
# (pattern on the op's name path with the U-Net's site names removed, part); first match wins.
PARTS = (
    (r"attn\d?/.*(bhts|bthd|bshd)|/softmax|attn\d/(reduce_max|reduce_sum|exp|div|sub)",
     "attention core (scores, softmax, weighted sum)"),
    (r"attn\d/to_(q|k|v)|/qkv", "attention q/k/v projections"),
    (r"attn\d/to_out|attn\d?/proj_out", "attention output projection"),
    (r"ff/(proj|out)/", "feed-forward matmuls"),
    (r"ff/", "GEGLU (split, exact GELU, product)"),
    (r"(^|/)norm\d?/|in_norm|out_norm", "normalisation (GroupNorm, LayerNorm)"),
    (r"silu", "SiLU"),
    (r"_conv/|skip/|conv_general", "convolutions"),
    (r"proj_in|proj_out", "transformer 1x1 projections"),
    (r"emb_proj|time_mlp|label_emb|sin|cos", "time/label embedding"),
    (r"attn", "attention (reshapes, scaling)"),
)
SITE = re.compile(r"^(UNet1D|(down|up)_\d+_(res|attn)_\d+|(down|up)_\d+_resample|"
                  r"mid_(res_\d+|attn)|block_\d+|jit\((?!silu).*\)|jvp\(.*\)|transpose\(.*\))$")


def kind_of(name: str) -> str:
  base = re.sub(r"\.\d+$", "", name)
  if base.startswith("ynn_fusion"):
    return "YNNPACK fusion (matmul + fused elementwise)"
  if base in ("dot", "dot_general"):
    return "XLA dot outside YNNPACK"
  if base in ("convolution", "conv_general_dilated"):
    return "convolution"
  if "transpose" in base or "copy" in base:
    return "layout copy / transpose"
  return "elementwise / reduction fusion"


def part_of(op_name: str) -> str:
  path = "/".join(p for p in op_name.split("/") if p and not SITE.match(p))
  for pattern, part in PARTS:
    if re.search(pattern, path):
      return part
  return "other (residual adds, concatenations, copies)"


def hlo_op_names(hlo: str) -> dict[str, str]:
  out = {}
  for line in hlo.splitlines():
    m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = ", line)
    if m:
      o = re.search(r'op_name="([^"]*)"', line)
      out[m.group(1)] = o.group(1) if o else ""
  return out


def profile(fn, args, reps: int) -> dict:
  """Compiles `fn`, runs it once, then `reps` times under the profiler; returns the summed thunk
  times by kind and by (direction, part), the wall time and XLA's FLOPs."""
  compiled = jax.jit(fn).lower(*args).compile()
  names = hlo_op_names(compiled.as_text())
  jax.block_until_ready(compiled(*args))
  # Without the profiler: wall, CPU time in user and kernel mode, fresh pages touched.
  r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
  for _ in range(reps):
    jax.block_until_ready(compiled(*args))
  plain_wall = (time.perf_counter() - t0) / reps
  r1 = resource.getrusage(resource.RUSAGE_SELF)
  mem = compiled.memory_analysis()
  with tempfile.TemporaryDirectory() as d:
    t0 = time.perf_counter()
    with jax.profiler.trace(d, create_perfetto_trace=True):
      for _ in range(reps):
        jax.block_until_ready(compiled(*args))
    wall = (time.perf_counter() - t0) / reps  # Includes the profiler's overhead.
    (path,) = glob.glob(f"{d}/**/*.trace.json.gz", recursive=True)
    events = json.load(gzip.open(path))
  events = events["traceEvents"] if isinstance(events, dict) else events
  by_kind, by_part = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") != "X" or e.get("name") not in names:
      continue
    op = names[e["name"]]
    direction = "backward" if "transpose(" in op else "forward"
    s = e["dur"] * 1e-6 / reps
    by_kind[kind_of(e["name"])] += s
    by_part[(direction, part_of(op))] += s
  return {"wall_s": plain_wall, "wall_profiled_s": wall, "busy_s": sum(by_kind.values()),
          "flops": bd._flops(compiled),
          "user_cpu_s": (r1.ru_utime - r0.ru_utime) / reps,
          "kernel_cpu_s": (r1.ru_stime - r0.ru_stime) / reps,
          "minor_page_faults": (r1.ru_minflt - r0.ru_minflt) / reps,
          "temp_bytes": None if mem is None else int(mem.temp_size_in_bytes),
          "by_kind": dict(by_kind.most_common()),
          "by_part": [{"direction": k[0], "part": k[1], "s": v} for k, v in by_part.most_common()]}


def _mb(n: int | None) -> str:
  return "unknown" if n is None else f"{n / 2 ** 20:,.0f} MiB"


def markdown(res: dict) -> str:
  st = res["settings"]
  lines = ["# profile_paper", "", f"`{res['command']}`", "",
           f"configs/default.py:paper U-Net, batch {st['batch']}, T={st['T']}, C={st['C']}, "
           f"float32, jax {res['jax']}, {res['cpu_count']} CPUs; matmul peak "
           f"{res['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s. Times per call, summed over XLA's "
           "worker threads (busy); wall without the profiler. XLA's CPU runtime allocates an "
           "executable's temporaries as one buffer per call, mapped fresh from the kernel when it "
           "is large: its page faults and zeroing are the kernel CPU time below."]
  for stage, r in res["stages"].items():
    lines += ["", f"## {stage}", "",
              f"wall {1e3 * r['wall_s']:.0f} ms ({1e3 * r['wall_profiled_s']:.0f} ms profiled), "
              f"busy {1e3 * r['busy_s']:.0f} ms, {r['flops'] / 1e9:.1f} GFLOP "
              f"({r['flops'] / r['wall_s'] / 1e9:.0f} GFLOP/s on the wall time). CPU time per "
              f"call: user {r['user_cpu_s']:.2f} s, kernel {r['kernel_cpu_s']:.2f} s "
              f"({100 * r['kernel_cpu_s'] / (r['user_cpu_s'] + r['kernel_cpu_s']):.0f}%); "
              f"{r['minor_page_faults']:,.0f} minor page faults (fresh 4 KiB pages) per call; "
              f"XLA temp buffer {_mb(r['temp_bytes'])}.", "", "| kind | ms | share |",
              "|---|---|---|"]
    lines += [f"| {k} | {1e3 * s:.0f} | {100 * s / r['busy_s']:.0f}% |"
              for k, s in r["by_kind"].items()]
    lines += ["", "| direction | part | ms | share |", "|---|---|---|---|"]
    lines += [f"| {p['direction']} | {p['part']} | {1e3 * p['s']:.0f} | "
              f"{100 * p['s'] / r['busy_s']:.1f}% |" for p in r["by_part"] if p["s"] >= 1e-3]
  return "\n".join(lines) + "\n"


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--batch", type=int, default=256)
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--out", default=os.path.join(HERE, "results", "profile_paper"))
  args = ap.parse_args(argv)
  b, t, c = args.batch, 24, 7
  unet = dataclasses.replace(bd._load_config("paper").unet, num_classes=2)
  _, apply_fn = make_denoiser(unet)
  params = jax.tree_util.tree_map(lambda p: p + 0.01,
                                  init_params(unet, jax.random.PRNGKey(0), t, c))
  x = jax.random.normal(jax.random.PRNGKey(1), (b, t, c))
  steps = jnp.arange(b, dtype=jnp.int32) % 200
  y = jnp.arange(b, dtype=jnp.int32) % 2

  def loss(p, x):  # The training step's network work: train mode (label dropout), L1 loss.
    out = UNet1D(unet).apply({"params": p}, x, steps, y, train=True,
                             rngs={"label": jax.random.PRNGKey(0)})
    return jnp.mean(jnp.abs(out - x))

  res = {"command": "python benchmarks/profile_paper.py", "jax": jax.__version__,
         "cpu_count": os.cpu_count(), "matmul_flops_per_s": bd.matmul_flops_per_s(2048, 3),
         "settings": {"batch": b, "T": t, "C": c, "reps": args.reps}, "stages": {}}
  res["stages"]["forward"] = profile(lambda p, x: apply_fn(p, x, steps, y), (params, x),
                                     args.reps)
  res["stages"]["gradient (training step without the optimizer)"] = profile(
      jax.grad(loss), (params, x), args.reps)
  tio.write_json(args.out + ".json", res)
  md = markdown(res)
  tio.write_text(args.out + ".md", md)
  print(md)


if __name__ == "__main__":
  main()
