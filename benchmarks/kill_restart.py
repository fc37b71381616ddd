"""Resumption check: does a pipeline that is killed and restarted end with the same report as
one that ran uninterrupted?

  python benchmarks/kill_restart.py [--config tiny] [--kill-after 60,150] [--out DIR]
                                    [--reference DIR_A] [--tag NAME]

Runs the pipeline once uninterrupted (workdir A; or takes an existing finished workdir of the
same config with --reference), then in workdir B starts it, SIGKILLs it after each
`--kill-after` delay (seconds since that start), and finally lets it finish. Records, per kill,
the artifacts workdir B's store had completed (kind -> names, from its manifest) and the
denoiser checkpoint's steps. Compares report.json of A and B (everything but wall-clock fields)
and writes benchmarks/results/kill_restart{_TAG}.json, listing any differing report paths.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from tardiff_jax import io as tio
from tardiff_jax.experiment import ArtifactStore, Workdir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cmd(config: str, workdir: str) -> list[str]:
  return [sys.executable, "-m", "tardiff_jax.main", f"--config={ROOT}/configs/{config}.py",
          f"--workdir={workdir}"]


def _done(workdir: str) -> dict:
  """What a (killed) run in `workdir` had completed: its store's artifacts (kind -> names) and
  the saved steps of the denoiser checkpoint."""
  arts: dict[str, list[str]] = {}
  if os.path.exists(os.path.join(workdir, "manifest.json")):
    for e in ArtifactStore(workdir, readonly=True).entries().values():
      arts.setdefault(e["kind"], []).append(e["name"])
  ckpt = Workdir(workdir).denoiser_dir
  steps = sorted(int(d) for d in os.listdir(ckpt) if d.isdigit()) if os.path.isdir(ckpt) else []
  return {"artifacts_at_kill": {k: sorted(v) for k, v in sorted(arts.items())},
          "denoiser_checkpoint_steps_at_kill": steps}


def _strip(obj):
  """The report without wall-clock fields."""
  if isinstance(obj, dict):
    return {k: _strip(v) for k, v in obj.items()
            if k not in ("timing", "seconds", "train_time_s", "time_s", "build_seconds")}
  if isinstance(obj, list):
    return [_strip(v) for v in obj]
  return obj


def _diff(a, b, path="") -> list[str]:
  """Paths where two JSON trees differ (value pairs shown for leaves)."""
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for k in sorted(set(a) | set(b)):
      if k not in a or k not in b:
        out.append(f"{path}/{k}: only in {'B' if k not in a else 'A'}")
      else:
        out += _diff(a[k], b[k], f"{path}/{k}")
    return out
  if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
    return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{path}[{i}]")]
  return [] if a == b else [f"{path}: {a!r} vs {b!r}"]


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", default="tiny")
  ap.add_argument("--kill-after", default="60,150")
  ap.add_argument("--out", default="/tmp/tardiff_kill_restart")
  ap.add_argument("--reference", default="", help="finished uninterrupted workdir to compare")
  ap.add_argument("--tag", default="")
  args = ap.parse_args()
  a, b = os.path.join(args.out, "A"), os.path.join(args.out, "B")
  shutil.rmtree(args.out, ignore_errors=True)
  env = dict(os.environ, TARDIFF_QUIET="1")
  t_a = None
  if args.reference:
    a = os.path.abspath(args.reference)
    if not os.path.exists(os.path.join(a, "report.json")):
      sys.exit(f"--reference {a} has no report.json; run the pipeline there first.")
  else:
    t0 = time.perf_counter()
    subprocess.run(_cmd(args.config, a), check=True, env=env, cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t_a = time.perf_counter() - t0
  kills = []
  for delay in (float(d) for d in args.kill_after.split(",") if d):
    p = subprocess.Popen(_cmd(args.config, b), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
      p.wait(timeout=delay)
      kills.append({"after_s": delay, "killed": False})
    except subprocess.TimeoutExpired:
      p.send_signal(signal.SIGKILL)
      p.wait()
      kills.append({"after_s": delay, "killed": True, **_done(b)})
  t0 = time.perf_counter()
  subprocess.run(_cmd(args.config, b), check=True, env=env, cwd=ROOT,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  t_b = time.perf_counter() - t0
  ra, rb = (_strip(json.load(open(os.path.join(d, "report.json")))) for d in (a, b))
  same = json.dumps(ra, sort_keys=True) == json.dumps(rb, sort_keys=True)
  res = {"config": args.config, "reference": a, "kills": kills, "uninterrupted_s": t_a,
         "final_restart_s": t_b, "reports_equal_except_timing": same,
         "differences": _diff(ra, rb)[:50]}
  name = "kill_restart" + (f"_{args.tag}" if args.tag else "") + ".json"
  tio.write_json(os.path.join(ROOT, "benchmarks", "results", name), res)
  print(json.dumps(res, indent=2))
  if not same:
    sys.exit(1)


if __name__ == "__main__":
  main()
