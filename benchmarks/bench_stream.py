"""Streaming generation of a large cohort: peak host memory, speed, and a kill + resume.

  python benchmarks/bench_stream.py [--config tiny] [--method tardiff] [--scale 1]
      [--num_samples 200000,1000000] [--kill_samples 20000]

1. Prepares a workdir (the run's stages up to `--mode=generate --methods=<method>`, in a child
   process, with `--config.guidance.scale` fixed so no sweep runs).
2. For each N in `--num_samples`, streams N samples (`tardiff --mode=generate
   --num_samples=N`) in a fresh child and records its peak resident memory (`ru_maxrss` from
   `os.wait4`: the whole process, with imports, the loaded model and compilation), wall time
   and samples/s. The same samples held in memory at once would take N * T * C * 4 bytes
   (reported next to it).
3. Kill + resume: streams `--kill_samples` samples uninterrupted (its chunks' SHA-256 kept, the
   directory moved aside), then the same command again, SIGKILLed once two chunks are on disk,
   and rerun; every chunk's SHA-256 must equal the uninterrupted run's.
Writes benchmarks/results/bench_stream.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_extract import run_child  # noqa: E402  (peak RSS of one child via os.wait4)

from tardiff_jax import io as tio  # noqa: E402


def tardiff(workdir: str, args, extra: list[str]) -> list[str]:
  """The Python arguments of a `tardiff` run of `args.method` at `args.scale` in `workdir`."""
  return ["-m", "tardiff_jax.main", f"--config={ROOT}/configs/{args.config}.py",
          f"--workdir={workdir}", f"--config.guidance.scale={args.scale}",
          f"--methods={args.method}", *extra]


def stream(workdir: str, args, n: int, what: str) -> tuple[float, float, str]:
  """Streams n samples in a fresh child (what: for the error); (wall s, peak RSS bytes, out)."""
  out = os.path.join(workdir, "synthetic", f"{args.method}_n{n}")
  shutil.rmtree(out, ignore_errors=True)
  print(f"[bench_stream] {what}: {n} samples", flush=True)
  rc, wall, rss, tail = run_child(tardiff(workdir, args, ["--mode=generate",
                                                         f"--num_samples={n}"]))
  if rc:
    raise SystemExit(f"{what} failed:\n{tail}")
  return wall, rss, out


def chunk_hashes(out: str) -> list[str]:
  return [c["sha256"] for c in tio.read_json(os.path.join(out, "manifest.json"))["chunks"]]


def main():
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--config", default="tiny")
  ap.add_argument("--method", default="tardiff")
  ap.add_argument("--scale", type=float, default=1.0)
  ap.add_argument("--num_samples", default="200000,1000000", help="comma-separated sizes")
  ap.add_argument("--kill_samples", type=int, default=20_000)
  ap.add_argument("--workdir", default=os.path.join(ROOT, "runs", "bench_stream"))
  ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "bench_stream"))
  args = ap.parse_args()
  wd = args.workdir
  res = {"command": "python benchmarks/bench_stream.py " + " ".join(
      f"--{k}={v}" for k, v in vars(args).items() if k not in ("out", "workdir")),
         "platform": platform.platform(), "cpu_count": os.cpu_count(),
         "load_avg_before": os.getloadavg()}
  print("[bench_stream] preparing the workdir", flush=True)
  rc, wall, _, tail = run_child(tardiff(wd, args, ["--mode=generate"]))
  if rc:
    raise SystemExit(f"preparing {wd} failed:\n{tail}")
  res["prepare_s"] = wall

  res["stream"] = []
  for n in (int(v) for v in args.num_samples.split(",")):
    wall, rss, out = stream(wd, args, n, "streaming")
    man = tio.read_json(os.path.join(out, "manifest.json"))
    t, c = man["shape_tc"]
    res["stream"].append({
        "num_samples": man["num_samples"], "chunks": len(man["chunks"]),
        "chunk_size": man["chunk_size"], "batch_size": man["batch_size"], "shape_tc": [t, c],
        "wall_s": wall, "peak_rss_mib": rss / 2**20, "under_1_gib": rss < 2**30,
        "in_memory_x_mib": man["num_samples"] * t * c * 4 / 2**20,
        "disk_mib": sum(os.path.getsize(os.path.join(out, ch["file"]))
                        for ch in man["chunks"]) / 2**20})
    shutil.rmtree(out)  # large; the numbers are kept
  rc, wall, rss0, _ = run_child(["-c", "import jax, tardiff_jax.experiment"])
  res["import_peak_rss_mib"] = rss0 / 2**20

  k = args.kill_samples
  _, _, ref = stream(wd, args, k, "uninterrupted reference")
  ref_hashes = chunk_hashes(ref)
  shutil.move(ref, ref + "_reference")
  print(f"[bench_stream] {k} samples, killed after two chunks, resumed", flush=True)
  cmd = tardiff(wd, args, ["--mode=generate", f"--num_samples={k}"])
  p = subprocess.Popen([sys.executable, *cmd], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, start_new_session=True)
  while not os.path.exists(os.path.join(ref, "chunk_000001.npz")):
    if p.poll() is not None:
      raise SystemExit("the generation ended before it could be killed; raise --kill_samples")
    time.sleep(0.05)
  os.killpg(p.pid, signal.SIGKILL)
  p.wait()
  on_disk = len([f for f in os.listdir(ref) if f.startswith("chunk_")])
  rc, wall, _, tail = run_child(cmd)
  if rc:
    raise SystemExit(f"resume failed:\n{tail}")
  res["kill_resume"] = {"num_samples": k, "chunks": len(ref_hashes),
                        "chunks_on_disk_at_kill": on_disk, "resume_wall_s": wall,
                        "equal_to_uninterrupted": chunk_hashes(ref) == ref_hashes}
  shutil.rmtree(ref)
  shutil.rmtree(ref + "_reference")
  res["load_avg_after"] = os.getloadavg()
  tio.write_json(args.out + ".json", res)
  kr = res["kill_resume"]
  md = ["# Streaming generation: memory, speed, kill + resume", "", f"`{res['command']}`", "",
        f"{res['cpu_count']} CPUs, load average before {res['load_avg_before'][0]:.2f}. "
        f"`{args.method}` at w = {args.scale}, config `{args.config}`. Peak RSS is the whole "
        "generating process (imports, data, models, compilation); importing jax and the "
        f"package alone takes {res['import_peak_rss_mib']:.0f} MiB.", "",
        "| samples | chunks | peak RSS | under 1 GiB | x held at once would be | on disk | "
        "wall (start to manifest) | samples/s |", "|---|---|---|---|---|---|---|---|"]
  for s in res["stream"]:
    md.append(f"| {s['num_samples']:,} ({s['shape_tc'][0]} x {s['shape_tc'][1]}) | "
              f"{s['chunks']} x {s['chunk_size']:,} | {s['peak_rss_mib']:.0f} MiB | "
              f"{'yes' if s['under_1_gib'] else 'NO'} | {s['in_memory_x_mib']:.0f} MiB | "
              f"{s['disk_mib']:.0f} MiB | {s['wall_s']:.1f} s | "
              f"{s['num_samples'] / s['wall_s']:.0f} |")
  md += ["", f"Kill + resume: {kr['num_samples']:,} samples in {kr['chunks']} chunks, SIGKILL "
         f"with {kr['chunks_on_disk_at_kill']} on disk, the same command rerun "
         f"({kr['resume_wall_s']:.1f} s): chunks "
         f"{'identical to' if kr['equal_to_uninterrupted'] else 'DIFFER from'} an "
         "uninterrupted run's (SHA-256).", ""]
  tio.write_text(args.out + ".md", "\n".join(md))
  print(json.dumps(res, indent=2))


if __name__ == "__main__":
  main()
