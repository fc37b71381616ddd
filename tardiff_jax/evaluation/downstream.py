"""The engine of TSTR / TSRTR: train fresh classifiers on any (x, y), score on the real test split.

`evaluate_fresh` trains one fresh classifier per seed on (x_fit, y_fit), all seeds together in
one vmapped computation (`train_classifier_seeds`), early-stops each seed on the real
VALIDATION split, picks each seed's F1 threshold on validation, and only then scores the real
test split. Test arrays are used for nothing but the final scores. `evaluate_fresh_group` does
the same for several training sets in one vmapped computation (the protocol settings of a
method).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm

from tardiff_jax.data.dataset import check_series
from tardiff_jax.data.prepare import target_class
from tardiff_jax.evaluation import metrics as mt
from tardiff_jax.models.classifier import ClassifierConfig, make_classifier
from tardiff_jax.models.timesnet import timesnet_periods
from tardiff_jax.training.classifier_trainer import (
  TrainClassifierConfig,
  predict_proba,
  train_classifier_seeds,
)

METRIC_KEYS = ("auroc", "auprc", "minority_f1", "minority_f1_at_0.5")


def evaluate_fresh(x_fit, y_fit, x_val, y_val, x_test, y_test,
                   classifier_config: ClassifierConfig, train_config: TrainClassifierConfig,
                   seeds: Sequence[int], *, minority: int | None = None,
                   target: int | None = None, refit_periods: bool = True,
                   name: str = "evaluate_fresh", quiet: bool = True) -> dict[str, Any]:
  """Trains a fresh classifier per seed on (x_fit, y_fit) and scores it on the real test split.

  Args:
    x_fit: float32[N, T, C], y_fit: int[N]: what the fresh model learns from (real, synthetic,
      or a mix), model-ready (normalised, missing values filled).
    x_val, y_val: the real validation split: early stopping (AUPRC) and the F1 threshold.
    x_test, y_test: the real test split: scored once per seed at the end.
    classifier_config: the downstream model (TimesNet or GRU).
    train_config: optimiser / early-stopping settings.
    seeds: S seeds, trained together (vmapped over params and keys).
    minority: minority class for F1 of a binary task; None = the less frequent class of y_fit,
      or of y_val when y_fit is balanced (e.g. a class-balanced synthetic set).
    target: the class scored one-vs-rest (AUROC, AUPRC, its F1); None = class 1 of a binary
      task, the rarest training class otherwise. With K > 2 classes the metrics are those of
      "target vs rest" and the F1 is the target class's.
    refit_periods: for TimesNet, recompute the periods from x_fit (a fresh model is set up on
      its own training data) instead of using those in `classifier_config`.
  Returns:
    {"auroc", "auprc", "minority_f1", "minority_f1_at_0.5": means over seeds,
     "std": {same keys: sample std over seeds (ddof=1; 0 for one seed)},
     "seeds": [per-seed {"seed", metrics..., "threshold", "best_epoch", "val_auprc"}],
     "num_seeds", "minority_class", "target_class", "n_fit", "periods",
     "curves": test ROC (tpr at `CURVE_GRID` false-positive rates) and PR (interpolated
     precision at `CURVE_GRID` recalls), averaged over seeds}.
  """
  return evaluate_fresh_group([(x_fit, y_fit)], x_val, y_val, x_test, y_test,
                              classifier_config, train_config, seeds, minority=minority,
                              target=target, refit_periods=refit_periods, name=name,
                              quiet=quiet)[0]


def evaluate_fresh_group(fit_sets: Sequence[tuple[Any, Any]], x_val, y_val, x_test, y_test,
                         classifier_config: ClassifierConfig,
                         train_config: TrainClassifierConfig, seeds: Sequence[int], *,
                         minority: int | None = None, target: int | None = None,
                         refit_periods: bool = True, epoch_size: int | None = None,
                         also_score: dict[str, tuple[Any, Any]] | None = None,
                         name: str = "evaluate_fresh", quiet: bool = True,
                         mesh=None) -> list[dict[str, Any]]:
  """`evaluate_fresh` for several training sets at once: one vmapped training of every
  (set, seed) member (e.g. TSTR and all TSRTR ratios of one method, 3 seeds each).

  The sets are stacked into one pool and each member trains on its own rows
  (`train_classifier_seeds(subsets=...)`), so the group costs what its members cost, but runs as
  one computation with S x sets models side by side: one compile per group and one unit of
  resumption. (On a 2-core CPU this does not raise examples/s: 18 GRU models side by side ran
  at 2,302 examples/s vs 2,635 for 3; the budget comes from the model and epoch sizes.) An
  epoch is `epoch_size` minibatch positions for every member (default: the largest
  set); smaller sets draw from successive permutations of their rows. TimesNet members are
  grouped by their periods (static shapes): sets whose spectra give different periods train in
  separate computations. `also_score` ({name: (x, y)}) scores the same trained models on more
  splits (e.g. a scale sweep scored on evaluation-val for the choice and on test for the record):
  result["also"][name] = {"auroc", "auprc", "log_loss": means over seeds, "seeds": per seed}.
  `mesh` splits the group's members over devices (`train_classifier_seeds`). Returns one
  `evaluate_fresh` result per set, in order.
  """
  if not fit_sets:
    raise ValueError("evaluate_fresh: need at least one training set.")
  x_test, y_test = check_series(x_test, y_test, what="evaluate_fresh: x_test")
  x_val, y_val = check_series(x_val, y_val, what="evaluate_fresh: x_val")
  seeds = [int(s) for s in seeds]
  if len(set(seeds)) != len(seeds):
    raise ValueError(f"evaluate_fresh: seeds must be distinct; got {seeds}.")
  sets, minorities, cfgs = [], [], []
  k = max([int(y_val.max()), int(y_test.max())] + [int(np.max(y)) for _, y in fit_sets]) + 1
  binary = k <= 2
  if target is None:
    target = 1 if binary else target_class(np.bincount(np.asarray(fit_sets[0][1]), minlength=k))
  for x_fit, y_fit in fit_sets:
    x_fit, y_fit = check_series(x_fit, y_fit, what="evaluate_fresh: training x")
    if x_test.shape[1:] != x_fit.shape[1:]:
      raise ValueError(f"evaluate_fresh: test [T, C] {x_test.shape[1:]} differs from fit "
                       f"{x_fit.shape[1:]}.")
    m = minority
    if not binary:
      m = 1  # Metrics are "target vs rest": the F1 is the target class's.
    elif m is None:
      n1 = int(np.sum(y_fit == 1))
      m = mt.minority_class(np.asarray(y_val) if 2 * n1 == y_fit.size else y_fit)
    cfg = classifier_config
    if refit_periods and cfg.model == "timesnet":
      cfg = dataclasses.replace(cfg, periods=timesnet_periods(x_fit, cfg.top_k))
    sets.append((x_fit, y_fit))
    minorities.append(int(m))
    cfgs.append(cfg)
  # Labels the metrics see: as they are for a binary task, "is the target" otherwise.
  y_val_m, y_test_m = ((y_val, y_test) if binary else
                       ((y_val == target).astype(np.int32), (y_test == target).astype(np.int32)))

  results: list[dict[str, Any] | None] = [None] * len(sets)
  for cfg in dict.fromkeys(cfgs):  # One vmapped training per distinct model config (periods).
    members = [j for j, c in enumerate(cfgs) if c == cfg]
    offsets = np.cumsum([0] + [sets[j][0].shape[0] for j in members])
    x_pool = np.concatenate([sets[j][0] for j in members])
    y_pool = np.concatenate([sets[j][1] for j in members])
    subsets = [np.arange(offsets[k], offsets[k + 1]) for k in range(len(members))
               for _ in seeds]
    classifier = make_classifier(cfg)
    params, hists = train_classifier_seeds(
        classifier, x_pool, y_pool, x_val, y_val, train_config, seeds * len(members),
        subsets=subsets, epoch_size=epoch_size, target=target, name=name, quiet=quiet,
        mesh=mesh)
    p_val = predict_proba(classifier, params, x_val, train_config.eval_batch_size, stacked=True,
                          target=target)
    p_test = predict_proba(classifier, params, x_test, train_config.eval_batch_size,
                           stacked=True, target=target)
    for i, j in enumerate(members):
      rows = range(i * len(seeds), (i + 1) * len(seeds))
      results[j] = _summarise([hists[r] for r in rows], p_val[list(rows)], p_test[list(rows)],
                              y_val_m, y_test_m, minorities[j], cfg, sets[j][0].shape[0])
      results[j]["target_class"] = int(target)
    for split, (xs, ys) in (also_score or {}).items():
      xs, ys = check_series(xs, ys, what=f"evaluate_fresh: also_score[{split!r}]")
      ys = np.asarray(ys) if binary else (np.asarray(ys) == target).astype(np.int32)
      p = predict_proba(classifier, params, xs, train_config.eval_batch_size, stacked=True,
                        target=target)
      for i, j in enumerate(members):
        per = [_ranking_metrics(ys, p[r]) for r in range(i * len(seeds), (i + 1) * len(seeds))]
        results[j].setdefault("also", {})[split] = {
            **{k: float(np.mean([m[k] for m in per])) for k in per[0]}, "seeds": per}
  return results


def _ranking_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
  """AUROC, AUPRC and the mean log-loss of probabilities p[N] of the target class."""
  q = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
  both = 0 < int(y.sum()) < y.size
  return {"auroc": float(skm.roc_auc_score(y, q)) if both else float("nan"),
          "auprc": float(skm.average_precision_score(y, q)) if both else float("nan"),
          "log_loss": float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))}


CURVE_GRID = np.linspace(0.0, 1.0, 101)


def _curves(y_test: np.ndarray, p_test: np.ndarray) -> dict[str, list[float]]:
  """Test ROC (tpr at CURVE_GRID false-positive rates) and PR (interpolated precision: the best
  precision at recall >= r, at CURVE_GRID recalls), averaged over seeds. p_test: [S, N]."""
  tprs, precs = [], []
  for p in p_test:
    fpr, tpr, _ = skm.roc_curve(y_test, p)
    tprs.append(np.interp(CURVE_GRID, fpr, tpr))
    prec, rec, _ = skm.precision_recall_curve(y_test, p)
    best = np.maximum.accumulate(prec)  # recall is decreasing: running max = best at >= r
    precs.append(np.interp(CURVE_GRID, rec[::-1], best[::-1]))
  return {"tpr": np.mean(tprs, axis=0).round(5).tolist(),
          "precision": np.mean(precs, axis=0).round(5).tolist()}


def _summarise(hists, p_val, p_test, y_val, y_test, minority: int, cfg: ClassifierConfig,
               n_fit: int) -> dict[str, Any]:
  """Per-seed test metrics (threshold chosen on validation) and their mean / spread."""
  per_seed = []
  for i, h in enumerate(hists):
    thr = mt.best_f1_threshold(y_val, p_val[i], minority)  # Chosen on validation only.
    m = mt.binary_metrics(y_test, p_test[i], threshold=thr, minority=minority)
    m.update(seed=h["seed"], best_epoch=h["best_epoch"], val_auprc=h["best_val_auprc"],
             epochs_run=h["epochs_run"])
    per_seed.append(m)
  out: dict[str, Any] = {}
  for k in METRIC_KEYS:
    vals = np.array([m[k] for m in per_seed], np.float64)
    out[k] = float(vals.mean())
  out["std"] = {k: float(np.std([m[k] for m in per_seed], ddof=1)) if len(per_seed) > 1
                else 0.0 for k in METRIC_KEYS}
  out.update(seeds=per_seed, num_seeds=len(per_seed), minority_class=int(minority),
             n_fit=int(n_fit), periods=None if cfg.periods is None else list(cfg.periods),
             train_time_s=float(hists[0]["time_s"]),
             epoch_size=int(hists[0]["epoch_size"]), group_size=int(hists[0]["group_size"]),
             curves=_curves(y_test, p_test))
  return out
