"""The code passes the project's ruff configuration (pyproject.toml), like CI's other checks."""

import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ruff_is_clean():
  ruff = shutil.which("ruff") or os.path.join(os.path.dirname(sys.executable), "ruff")
  out = subprocess.run([ruff, "check", "tardiff_jax", "tests", "configs", "benchmarks"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-1000:]
