"""Rewrites tests/data/tiny_report_reference.json: the tiny pipeline's report.json under the tests'
XLA settings, wall times removed, with the software stack it was written on.

  python tests/data/write_tiny_reference.py "which change alters the numbers, and why"

Run it only in the commit of a change meant to alter results; the tests compare every number.
"""

import os
import platform
import sys
import tempfile
from importlib.metadata import version

os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")  # As tests/conftest.py.

import jax  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")

from tardiff_jax import io as tio  # noqa: E402
from tardiff_jax.config import load_config  # noqa: E402
from tardiff_jax.experiment import run_mode  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "scikit-learn")
WALL_TIME = {"timing", "seconds", "train_time_s", "time_s", "notes"}


def _strip(obj):
  if isinstance(obj, dict):
    return {k: _strip(v) for k, v in obj.items() if k not in WALL_TIME}
  if isinstance(obj, list):
    return [_strip(v) for v in obj]
  return obj


def main() -> None:
  if len(sys.argv) != 2:
    raise SystemExit(__doc__)
  with tempfile.TemporaryDirectory() as wd:
    run_mode("pipeline", load_config("tiny"), wd, quiet=True)
    report = tio.read_json(os.path.join(wd, "report.json"))
  flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
  tio.write_json(os.path.join(HERE, "tiny_report_reference.json"), {
      "about": ("report.json of the tiny pipeline (configs/tiny.py, tests' XLA settings), wall "
                f"times removed; last rewritten because: {sys.argv[1]}"),
      "environment": {"packages": {p: version(p) for p in PACKAGES},
                      "machine": platform.machine(), "avx512f": "avx512f" in flags},
      "report": _strip(report)})


if __name__ == "__main__":
  main()
