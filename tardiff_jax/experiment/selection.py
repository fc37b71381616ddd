"""Choosing each guided method's scale w on validation (paper Section 4.6), never on test.

Every guided method (TarDiff, classifier guidance, batch guidance) whose scale is not fixed in
the config gets it from the same procedure and grid (`guidance.scale_grid`): for each w the
method's set is drawn (with the common sampling key, so w = 0 is the unguided set), mixed into
real train at alpha = 1 (TSRTR), and fresh downstream models (one vmapped group over every w and
seed, with the same inits and minibatch order for every w: common random numbers) early-stop on
guidance-val and are scored on evaluation-val; w maximises the evaluation-val AUPRC averaged over
the seeds (ties: the smaller |w|; `choose_scale`). The sweep also records each w's mean
influence of the drawn samples on the guidance set, which should rise with w for TarDiff (paper
Fig. 3). The selected w's samples are the method's set itself (same key, same artifact).

With `guidance.class_filter = "auto"` TarDiff's sweep also chooses whose guidance-val rows G
averages: every w of `scale_grid` with G over all rows and every w of `minority_scale_grid`
with G over the minority class only (the paper's Table 5), one group of models, the best
evaluation-val AUPRC over both (ties: the smaller |w|, then all rows). On the simulator the
minority-only G wins where positives are scarce and loses where they are not
(benchmarks/results/utility_simulator.md), so neither is right for every cohort.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tardiff_jax.experiment.methods import get_method
from tardiff_jax.experiment.store import settings_digest
from tardiff_jax.influence.guidance import per_row_batches
from tardiff_jax.influence.scores import influence

CRITERION = "evaluation-val AUPRC, TSRTR alpha=1.0"


@dataclasses.dataclass(frozen=True)
class ScaleSelection:
  """The chosen w, one row per candidate (eval-val metrics, mean influence), the grid and the
  wall time of the sweep."""
  selected: float
  rows: list[dict[str, Any]]
  grid: tuple[float, ...]
  criterion: str
  seconds: float
  guidance_signal: bool = True  # False: the guide is no better than chance (see gate.py).
  class_filter: str = "all"  # Whose guidance-val rows the chosen G averages.
  grids: dict[str, tuple[float, ...]] = dataclasses.field(default_factory=dict)  # per filter

  def to_dict(self) -> dict[str, Any]:
    out = {"grid": list(self.grid), "rows": self.rows, "selected_scale": self.selected,
           "criterion": self.criterion, "seconds": self.seconds,
           "guidance_signal": self.guidance_signal, "selected_class_filter": self.class_filter}
    if len(self.grids) > 1:
      out["grids"] = {f: list(g) for f, g in self.grids.items()}
    return out


@functools.lru_cache(maxsize=8)
def _influence_fn(loss_fn, variant: str):
  """The jitted per-sample influence score, one per guide loss and variant (every w and class
  filter of a sweep reuses its compilation)."""
  return jax.jit(lambda p, G, xb, yb: influence(loss_fn, p, G, xb, yb, variant))


def _mean_influence(exp, x: np.ndarray, y: np.ndarray, G: Any, batch: int = 512) -> np.ndarray:
  """Per-sample influence of (x, y) on the guidance set under G, in batches of one shape (the
  last one padded with copies of its last row: the score is per row)."""
  guide = exp.guide
  score_fn = _influence_fn(guide.classifier.loss_fn, exp.config.guidance.variant)
  return per_row_batches(lambda xb, yb: score_fn(guide.params, G, jnp.asarray(xb),
                                                 jnp.asarray(yb)), x, y, min(batch, len(y)))


def choose_row(rows: list[dict[str, Any]], criterion: str = "auprc") -> dict[str, Any]:
  """The best row: the largest mean `criterion` ("auprc", "auroc"; "log_loss" is minimised),
  ties broken towards the smaller |w|, then towards the earlier row."""
  sign = -1.0 if criterion == "log_loss" else 1.0
  best = max(range(len(rows)),
             key=lambda i: (sign * rows[i][criterion], -abs(rows[i]["scale"]), -i))
  return rows[best]


def choose_scale(rows: list[dict[str, Any]], criterion: str = "auprc") -> float:
  """The scale of the best row (`choose_row`)."""
  return float(choose_row(rows, criterion)["scale"])


def sweep_grids(exp, method: str) -> dict[str, tuple[float, ...]]:
  """The candidate w per class filter of G in `method`'s sweep (see the module docstring)."""
  g = exp.config.guidance
  grid = tuple(float(w) for w in g.scale_grid)
  candidates = exp.filter_candidates(method)
  grids = {candidates[0]: grid}
  for f in candidates[1:]:  # w = 0 is the unguided set whatever the filter: it is swept once.
    grids[f] = tuple(float(w) for w in (g.minority_scale_grid or grid) if w != 0.0)
  return grids


def cache_filters(exp, methods) -> list[str]:
  """The class filters of G that the guided `methods` may sample with (their sweeps')."""
  return list(dict.fromkeys(f for m in methods if get_method(m).guided
                            for f in exp.filter_candidates(m)))


def sweep_name(method: str) -> str:
  """The artifact (and plot) name of `method`'s sweep: TarDiff keeps the historical name."""
  return "scale_sweep" if method == "tardiff" else f"scale_sweep_{method}"


def select_scale(exp, method: str = "tardiff") -> ScaleSelection:
  """The sweep of `method` in `exp` (an `Experiment`), computed once and stored
  (`Experiment.selection_for` keeps it for the run)."""
  grids = sweep_grids(exp, method)
  first = next(iter(grids))
  grid = grids[first]
  base = exp.synthetic_settings(method, None, first)
  base.pop("scale")
  evaluation = {"downstream": exp.config.evaluation.downstream}
  if exp.config.evaluation.synthetic_masks:  # The sweep's models see masked samples.
    evaluation["synthetic_masks"] = True
  settings = {"grid": list(grid), method: settings_digest(base),
              "criterion": CRITERION, "seeds": exp.protocol_seeds,
              "epoch_size": exp.epoch_size, "evaluation": evaluation,
              "guide_val": exp.data.fingerprint("guide_val"),
              "eval_val": exp.data.fingerprint("eval_val")}
  if len(grids) > 1:  # Only then: one filter keeps the keys of runs made before the choice.
    settings["class_filters"] = {f: list(g) for f, g in grids.items()}
  key = exp.store.key("selection", sweep_name(method), settings)
  stored = exp.store.read_json(key)
  if stored is not None:
    return ScaleSelection(float(stored["selected_scale"]), stored["rows"], grid,
                          stored["criterion"], float(stored["seconds"]),
                          bool(stored.get("guidance_signal", True)),
                          stored.get("selected_class_filter", first), grids)
  exp.store.check_writable(key)
  t0 = time.perf_counter()
  drawn, fits, infl = {}, {}, {}
  for f, ws in grids.items():
    G = exp.cache_for(f)[0].G
    for w in ws:
      syn = exp.synthetic(method, scale=w, class_filter=f)
      drawn[f, w] = syn
      infl[f, w] = _mean_influence(exp, syn.x, syn.y, G)
      x, y, ident, _ = exp.mix(syn, 1.0)
      fits[_fit_name(f, w, first)] = (x, y, ident)
  # The fresh TSRTR models early-stop on guidance-val and are scored on evaluation-val.
  res_all = exp.protocol_group(fits, "guide_val", "eval_val", f"select_scale_{method}")
  rows = []
  for (f, w), syn in drawn.items():
    res, y, v = res_all[_fit_name(f, w, first)], syn.y, infl[f, w]
    rows.append({"scale": w, "class_filter": f, "auroc": res["auroc"], "auprc": res["auprc"],
                 "minority_f1": res["minority_f1"], "std": res.get("std", {}),
                 "mean_influence": float(np.mean(v)),
                 "mean_influence_by_class": {str(c): float(np.mean(v[y == c]))
                                             for c in np.unique(y)}})
    exp.log(f"select_scale: {method} w={w:g} (G over {f}) eval-val AUPRC {res['auprc']:.3f} "
            f"AUROC {res['auroc']:.3f} mean influence {np.mean(v):.4g}")
  signal = exp.guide_quality.signal
  if not signal:
    exp.log("select_scale: no guidance signal (the guide is no better than chance): the "
            "guided samples of this sweep follow a guide that has learned nothing")
  best = choose_row(rows)
  sel = ScaleSelection(float(best["scale"]), rows, grid, CRITERION, time.perf_counter() - t0,
                       signal, best["class_filter"], grids)
  exp.store.write_json(key, sel.to_dict(), seconds=sel.seconds)
  exp.log(f"select_scale: {method}: selected w = {sel.selected:g}"
          + (f", G over {sel.class_filter}" if len(grids) > 1 else ""))
  return sel


def _fit_name(class_filter: str, w: float, first: str) -> str:
  """The sweep's protocol setting of (class filter, w); the first filter keeps the old names."""
  return f"sweep_w{w:g}" if class_filter == first else f"sweep_{class_filter}_w{w:g}"
