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
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tardiff_jax.experiment.store import settings_digest
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

  def to_dict(self) -> dict[str, Any]:
    return {"grid": list(self.grid), "rows": self.rows, "selected_scale": self.selected,
            "criterion": self.criterion, "seconds": self.seconds,
            "guidance_signal": self.guidance_signal}


def _mean_influence(exp, x: np.ndarray, y: np.ndarray) -> np.ndarray:
  guide, g = exp.guide, exp.config.guidance
  score_fn = jax.jit(lambda p, G, xb, yb: influence(guide.classifier.loss_fn, p, G, xb, yb,
                                                    g.variant))
  G = exp.guidance_cache.G
  return np.concatenate([np.asarray(score_fn(guide.params, G, jnp.asarray(x[i:i + 512]),
                                             jnp.asarray(y[i:i + 512])))
                         for i in range(0, len(y), 512)])


def choose_scale(rows: list[dict[str, Any]], criterion: str = "auprc") -> float:
  """The scale of the best row: the largest mean `criterion` ("auprc", "auroc"; "log_loss" is
  minimised), ties broken towards the smaller |w|."""
  sign = -1.0 if criterion == "log_loss" else 1.0
  return float(max(rows, key=lambda r: (sign * r[criterion], -abs(r["scale"])))["scale"])


def sweep_name(method: str) -> str:
  """The artifact (and plot) name of `method`'s sweep: TarDiff keeps the historical name."""
  return "scale_sweep" if method == "tardiff" else f"scale_sweep_{method}"


def select_scale(exp, method: str = "tardiff") -> ScaleSelection:
  """The sweep of `method` in `exp` (an `Experiment`), computed once and stored
  (`Experiment.selection_for` keeps it for the run)."""
  grid = tuple(float(w) for w in exp.config.guidance.scale_grid)
  base = exp.synthetic_settings(method, None)
  base.pop("scale")
  evaluation = {"downstream": exp.config.evaluation.downstream}
  if exp.config.evaluation.synthetic_masks:  # The sweep's models see masked samples.
    evaluation["synthetic_masks"] = True
  key = exp.store.key("selection", sweep_name(method),
                      {"grid": list(grid), method: settings_digest(base),
                       "criterion": CRITERION, "seeds": exp.protocol_seeds,
                       "epoch_size": exp.epoch_size, "evaluation": evaluation,
                       "guide_val": exp.data.fingerprint("guide_val"),
                       "eval_val": exp.data.fingerprint("eval_val")})
  stored = exp.store.read_json(key)
  if stored is not None:
    sel = ScaleSelection(float(stored["selected_scale"]), stored["rows"], grid,
                         stored["criterion"], float(stored["seconds"]),
                         bool(stored.get("guidance_signal", True)))
  else:
    exp.store.check_writable(key)
    t0 = time.perf_counter()
    drawn, fits, infl = {}, {}, {}
    for w in grid:
      syn = exp.synthetic(method, scale=w)
      drawn[w] = syn
      infl[w] = _mean_influence(exp, syn.x, syn.y)
      x, y, ident, _ = exp.mix(syn, 1.0)
      fits[f"sweep_w{w:g}"] = (x, y, ident)
    # The fresh TSRTR models early-stop on guidance-val and are scored on evaluation-val.
    res_all = exp.protocol_group(fits, "guide_val", "eval_val", f"select_scale_{method}")
    rows = []
    for w in grid:
      res, y = res_all[f"sweep_w{w:g}"], drawn[w].y
      rows.append({"scale": w, "auroc": res["auroc"], "auprc": res["auprc"],
                   "minority_f1": res["minority_f1"], "std": res.get("std", {}),
                   "mean_influence": float(np.mean(infl[w])),
                   "mean_influence_by_class": {str(c): float(np.mean(infl[w][y == c]))
                                               for c in np.unique(y)}})
      exp.log(f"select_scale: {method} w={w:g} eval-val AUPRC {res['auprc']:.3f} AUROC "
              f"{res['auroc']:.3f} mean influence {np.mean(infl[w]):.4g}")
    signal = exp.guide_quality.signal
    if not signal:
      exp.log("select_scale: no guidance signal (the guide is no better than chance): the "
              "guided samples of this sweep follow a guide that has learned nothing")
    sel = ScaleSelection(choose_scale(rows), rows, grid, CRITERION, time.perf_counter() - t0,
                         signal)
    exp.store.write_json(key, sel.to_dict(), seconds=sel.seconds)
    exp.log(f"select_scale: {method}: selected w = {sel.selected:g}")
  return sel
