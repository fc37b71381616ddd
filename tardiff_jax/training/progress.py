"""Progress output for long stages: step, loss, throughput and ETA, plus `metrics.jsonl` lines."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from tardiff_jax import io as tio


class Progress:
  """Prints `[name] step/total  key=value ...  N it/s  ETA` and appends metrics to a JSONL file.

  Throughput excludes the first `report` call (which usually includes compilation).
  """

  def __init__(self, name: str, total: int, start: int = 0, metrics_path: str | None = None,
               unit: str = "it", stream=None, quiet: bool = False):
    self.name, self.total, self.unit = name, int(total), unit
    self.metrics_path = metrics_path
    self.stream = stream or sys.stderr
    self.quiet = quiet or os.environ.get("TARDIFF_QUIET") == "1"
    self._t0 = time.perf_counter()
    self._first: tuple[float, int] | None = None
    self._start = int(start)

  def rate(self, step: int) -> float:
    if self._first is None:
      return float("nan")
    t, s = self._first
    dt = time.perf_counter() - t
    return (step - s) / dt if dt > 0 and step > s else float("nan")

  def report(self, step: int, **metrics: Any) -> None:
    """Reports progress at `step` (1-based count of completed units) with scalar metrics."""
    now = time.perf_counter()
    if self._first is None:
      self._first = (now, step)
    rate = self.rate(step)
    remaining = (self.total - step) / rate if rate == rate and rate > 0 else float("nan")
    record = {"stage": self.name, "step": int(step), "time_s": round(now - self._t0, 3)}
    record.update({k: float(v) for k, v in metrics.items()})
    if self.metrics_path:
      tio.append_jsonl(self.metrics_path, record)
    if not self.quiet:
      parts = " ".join(f"{k}={float(v):.4g}" for k, v in metrics.items())
      eta = _fmt_seconds(remaining) if remaining == remaining else "?"
      speed = f"{rate:.3g} {self.unit}/s" if rate == rate else f"- {self.unit}/s"
      print(f"[{self.name}] {step}/{self.total} {parts} {speed} ETA {eta}",
            file=self.stream, flush=True)

  def elapsed(self) -> float:
    return time.perf_counter() - self._t0


def _fmt_seconds(s: float) -> str:
  s = int(round(s))
  h, rem = divmod(s, 3600)
  m, sec = divmod(rem, 60)
  return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"
