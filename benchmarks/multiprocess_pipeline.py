"""The whole pipeline as several processes (one mesh over their fake CPU devices) against the same
pipeline in one process on one device: every number of the two report.json files compared.

  python benchmarks/multiprocess_pipeline.py [--config tiny] [--processes 2] [--devices 2]

Runs `tardiff --distributed` as `--processes` localhost processes with `--devices` fake CPU
devices each (`--config.parallel.devices=0`: one mesh of processes x devices), then the same
config in one plain process, in fresh temporary workdirs. Reports the wall times, the number of
report values that differ, the largest relative difference and whether every discrete choice
(selected scales, verdicts, strings) is the same. Writes
benchmarks/results/multiprocess_pipeline.{json,md}.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import subprocess
import sys
import tempfile
import time

from tardiff_jax import io as tio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WALL = ("seconds", "timing", "created", "elapsed_s", "time_s", "workdir")


def compare(a, b, path: str = "", out: list | None = None) -> list[tuple[str, object, object]]:
  """(path, a, b) for every leaf where a and b differ (wall times and paths aside)."""
  out = [] if out is None else out
  if isinstance(a, dict) and isinstance(b, dict):
    for k in sorted(set(a) | set(b)):
      if not any(w in k for w in WALL):
        compare(a.get(k), b.get(k), f"{path}.{k}", out)
  elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
    for i, (u, v) in enumerate(zip(a, b)):
      compare(u, v, f"{path}[{i}]", out)
  elif a != b and not (isinstance(a, float) and isinstance(b, float)
                       and math.isnan(a) and math.isnan(b)):
    out.append((path, a, b))
  return out


def run(cmds: list[list[str]], env: dict) -> float:
  t0 = time.perf_counter()
  procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True) for c in cmds]
  errs = [p.communicate()[1] for p in procs]
  for p, e in zip(procs, errs):
    if p.returncode:
      raise SystemExit(f"{' '.join(p.args[:4])}... failed:\n{e[-3000:]}")
  return time.perf_counter() - t0


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", default="tiny")
  ap.add_argument("--processes", type=int, default=2)
  ap.add_argument("--devices", type=int, default=2, help="fake CPU devices per process")
  args = ap.parse_args(argv)
  tmp = tempfile.mkdtemp(prefix="tardiff_mp_")
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  base = [sys.executable, "-m", "tardiff_jax.main", f"--config={ROOT}/configs/{args.config}.py"]
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  multi = [[*base, f"--workdir={tmp}/multi", "--config.parallel.devices=0", "--distributed",
            f"--coordinator_address=localhost:{port}", f"--num_processes={args.processes}",
            f"--process_id={i}"] for i in range(args.processes)]
  print(f"[multiprocess_pipeline] {args.processes} processes x {args.devices} devices", flush=True)
  multi_s = run(multi, {**env, "XLA_FLAGS": f"--xla_force_host_platform_device_count="
                                            f"{args.devices}"})
  print("[multiprocess_pipeline] one process, one device", flush=True)
  single_s = run([[*base, f"--workdir={tmp}/single"]], env)
  a = tio.read_json(f"{tmp}/single/report.json")
  b = tio.read_json(f"{tmp}/multi/report.json")
  diffs = compare(a, b)
  numeric = [(p, u, v) for p, u, v in diffs if isinstance(u, (int, float))
             and isinstance(v, (int, float)) and not isinstance(u, bool)]
  rel = [abs(u - v) / max(abs(u), abs(v), 1e-12) for _, u, v in numeric]
  worst = sorted(zip(rel, numeric), reverse=True)[:5]
  res = {"config": args.config, "processes": args.processes, "devices_per_process": args.devices,
         "cpu_count": os.cpu_count(), "multi_seconds": multi_s, "single_seconds": single_s,
         "values_differing": len(diffs), "numeric_differing": len(numeric),
         "other_differing": [f"{p}: {u!r} vs {v!r}" for p, u, v in diffs
                             if (p, u, v) not in numeric][:20],
         "max_relative_difference": max(rel, default=0.0),
         "largest": [{"path": p, "single": u, "multi": v, "relative": r}
                     for r, (p, u, v) in worst]}
  out = os.path.join(ROOT, "benchmarks", "results", "multiprocess_pipeline")
  tio.write_json(out + ".json", res)
  lines = [f"# The pipeline in {args.processes} processes vs one ({args.config} config)", "",
           "`python benchmarks/multiprocess_pipeline.py "
           f"--config {args.config} --processes {args.processes} --devices {args.devices}`", "",
           f"{args.processes} localhost processes x {args.devices} fake CPU devices (one mesh of "
           f"{args.processes * args.devices}, gloo collectives) against one process on one "
           f"device, {os.cpu_count()} CPU cores shared by all of them.", "",
           f"- Wall time: {multi_s:.0f} s (processes) vs {single_s:.0f} s (one process).",
           f"- report.json values that differ: {len(diffs)} ({len(numeric)} numbers); the "
           f"largest relative difference {res['max_relative_difference']:.1e}.",
           f"- Discrete values (selected scales, verdicts, text) that differ: "
           f"{len(res['other_differing'])}.", "", "| value | one process | processes | rel. |",
           "|---|---|---|---|"]
  lines += [f"| `{w['path']}` | {w['single']:.9g} | {w['multi']:.9g} | {w['relative']:.1e} |"
            for w in res["largest"]]
  tio.write_text(out + ".md", "\n".join(lines) + "\n")
  print("\n".join(lines[6:9]), flush=True)
  return res


if __name__ == "__main__":
  main()
