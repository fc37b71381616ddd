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
                   refit_periods: bool = True, name: str = "evaluate_fresh",
                   quiet: bool = True) -> dict[str, Any]:
  """Trains a fresh classifier per seed on (x_fit, y_fit) and scores it on the real test split.

  Args:
    x_fit: float32[N, T, C], y_fit: int[N]: what the fresh model learns from (real, synthetic,
      or a mix), model-ready (normalised, missing values filled).
    x_val, y_val: the real validation split: early stopping (AUPRC) and the F1 threshold.
    x_test, y_test: the real test split: scored once per seed at the end.
    classifier_config: the downstream model (TimesNet or GRU).
    train_config: optimiser / early-stopping settings.
    seeds: S seeds, trained together (vmapped over params and keys).
    minority: minority class for F1; None = the less frequent class of y_fit, or of y_val when
      y_fit is balanced (e.g. a class-balanced synthetic set).
    refit_periods: for TimesNet, recompute the periods from x_fit (a fresh model is set up on
      its own training data) instead of using those in `classifier_config`.
  Returns:
    {"auroc", "auprc", "minority_f1", "minority_f1_at_0.5": means over seeds,
     "std": {same keys: sample std over seeds (ddof=1; 0 for one seed)},
     "seeds": [per-seed {"seed", metrics..., "threshold", "best_epoch", "val_auprc"}],
     "num_seeds", "minority_class", "n_fit", "periods"}.
  """
  return evaluate_fresh_group([(x_fit, y_fit)], x_val, y_val, x_test, y_test,
                              classifier_config, train_config, seeds, minority=minority,
                              refit_periods=refit_periods, name=name, quiet=quiet)[0]


def evaluate_fresh_group(fit_sets: Sequence[tuple[Any, Any]], x_val, y_val, x_test, y_test,
                         classifier_config: ClassifierConfig,
                         train_config: TrainClassifierConfig, seeds: Sequence[int], *,
                         minority: int | None = None, refit_periods: bool = True,
                         epoch_size: int | None = None, name: str = "evaluate_fresh",
                         quiet: bool = True) -> list[dict[str, Any]]:
  """`evaluate_fresh` for several training sets at once: one vmapped training of every
  (set, seed) member (e.g. TSTR and all TSRTR ratios of one method, 3 seeds each).

  The sets are stacked into one pool and each member trains on its own rows
  (`train_classifier_seeds(subsets=...)`), so the group costs what its members cost, but runs as
  one computation with S x sets models side by side: one compile per group and one unit of
  resumption. (On a 2-core CPU this does not raise examples/s: 18 GRU models side by side ran
  at 2,302 examples/s vs 2,635 for 3; the budget comes from the model and epoch sizes.) An epoch is `epoch_size` minibatch positions for every member (default: the largest
  set); smaller sets draw from successive permutations of their rows. TimesNet members are
  grouped by their periods (static shapes): sets whose spectra give different periods train in
  separate computations. Returns one `evaluate_fresh` result per set, in order.
  """
  if not fit_sets:
    raise ValueError("evaluate_fresh: need at least one training set.")
  y_test = np.asarray(y_test)
  if np.asarray(x_test).ndim != 3:
    raise ValueError(f"evaluate_fresh: x_test must be [N, T, C]; got {np.shape(x_test)}.")
  if np.asarray(x_test).shape[0] != y_test.shape[0] or y_test.size == 0:
    raise ValueError("evaluate_fresh: x_test and y_test must be non-empty with equal length.")
  seeds = [int(s) for s in seeds]
  if len(set(seeds)) != len(seeds):
    raise ValueError(f"evaluate_fresh: seeds must be distinct; got {seeds}.")
  sets, minorities, cfgs = [], [], []
  for x_fit, y_fit in fit_sets:
    x_fit = np.asarray(x_fit, np.float32)
    y_fit = np.asarray(y_fit)
    if x_fit.ndim != 3:
      raise ValueError(f"evaluate_fresh: x arrays must be [N, T, C]; got fit {x_fit.shape}.")
    if np.asarray(x_test).shape[1:] != x_fit.shape[1:]:
      raise ValueError(f"evaluate_fresh: test [T, C] {np.shape(x_test)[1:]} differs from fit "
                       f"{x_fit.shape[1:]}.")
    m = minority
    if m is None:
      n1 = int(np.sum(y_fit == 1))
      m = mt.minority_class(np.asarray(y_val) if 2 * n1 == y_fit.size else y_fit)
    cfg = classifier_config
    if refit_periods and cfg.model == "timesnet":
      cfg = dataclasses.replace(cfg, periods=timesnet_periods(x_fit, cfg.top_k))
    sets.append((x_fit, y_fit))
    minorities.append(int(m))
    cfgs.append(cfg)

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
        subsets=subsets, epoch_size=epoch_size, name=name, quiet=quiet)
    p_val = predict_proba(classifier, params, x_val, train_config.eval_batch_size, stacked=True)
    p_test = predict_proba(classifier, params, x_test, train_config.eval_batch_size,
                           stacked=True)
    for k, j in enumerate(members):
      rows = range(k * len(seeds), (k + 1) * len(seeds))
      results[j] = _summarise([hists[i] for i in rows], p_val[list(rows)], p_test[list(rows)],
                              y_val, y_test, minorities[j], cfg, sets[j][0].shape[0])
  return results


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
             epoch_size=int(hists[0]["epoch_size"]), group_size=int(hists[0]["group_size"]))
  return out
