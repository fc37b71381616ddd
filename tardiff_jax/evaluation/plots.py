"""Report figures (matplotlib, PNG), written atomically into `workdir/plots/`.

Figures are built with `matplotlib.figure.Figure` (Agg canvas), never pyplot, so no global
backend is changed (notebooks keep their inline backend) and nothing leaks between calls.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tardiff_jax.evaluation.report import metric_mean_std
from tardiff_jax.io import atomic_open

METRICS = ("auroc", "auprc", "minority_f1")
_REAL_COLOR, _SYN_COLOR = "tab:blue", "tab:orange"


def _save(fig: Figure, path: str | os.PathLike) -> str:
  FigureCanvasAgg(fig)
  fig.tight_layout()
  with atomic_open(path, "wb") as f:
    fig.savefig(f, format="png", dpi=110)
  return os.fspath(path)


def plot_traces(path: str | os.PathLike, x_real: np.ndarray, y_real: np.ndarray,
                x_syn: np.ndarray, y_syn: np.ndarray, channel_names: Sequence[str],
                class_names: Sequence[str], n: int = 3, seed: int = 0) -> str:
  """Grid (channel rows x class columns) of `n` real (solid) vs `n` synthetic (dashed) traces.

  x_*: float[N, T, C] in the same (ideally original) units; y_*: int[N]. NaN shows as a gap.
  """
  x_real, x_syn = np.asarray(x_real), np.asarray(x_syn)
  y_real, y_syn = np.asarray(y_real), np.asarray(y_syn)
  c = x_real.shape[2]
  if len(channel_names) != c:
    raise ValueError(f"channel_names has {len(channel_names)} names for {c} channels.")
  k = len(class_names)
  rng = np.random.default_rng(seed)
  fig = Figure(figsize=(3.2 * k, 1.6 * c + 0.6))
  axes = fig.subplots(c, k, squeeze=False, sharex=True)
  t = np.arange(x_real.shape[1])
  for j, cname in enumerate(class_names):
    picks = {}
    for label, xs, ys in (("real", x_real, y_real), ("synthetic", x_syn, y_syn)):
      idx = np.flatnonzero(ys == j)
      picks[label] = xs[rng.choice(idx, size=min(n, idx.size), replace=False)] if idx.size else []
    for i in range(c):
      ax = axes[i, j]
      for s, xr in enumerate(picks["real"]):
        ax.plot(t, xr[:, i], color=_REAL_COLOR, lw=1.0, label="real" if s == 0 else None)
      for s, xs in enumerate(picks["synthetic"]):
        ax.plot(t, xs[:, i], color=_SYN_COLOR, lw=1.0, ls="--",
                label="synthetic" if s == 0 else None)
      if i == 0:
        ax.set_title(f"{cname} (real {len(picks['real'])}, syn {len(picks['synthetic'])})",
                     fontsize=9)
      if j == 0:
        ax.set_ylabel(channel_names[i], fontsize=8)
      ax.tick_params(labelsize=7)
  axes[-1, 0].set_xlabel("time step")
  handles, labels = [], []
  for ax in axes.flat:
    for h, lab in zip(*ax.get_legend_handles_labels()):
      if lab not in labels:
        handles.append(h)
        labels.append(lab)
  if handles:
    axes[0, -1].legend(handles, labels, fontsize=7, loc="best")
  return _save(fig, path)


def _flat_filled(x: np.ndarray, fill: np.ndarray | None = None):
  f = np.asarray(x, np.float64).reshape(len(x), -1)
  if fill is None:
    with np.errstate(invalid="ignore"):
      fill = np.nanmean(f, axis=0)
    fill = np.where(np.isfinite(fill), fill, 0.0)
  return np.where(np.isfinite(f), f, fill), fill


def pca_project(real: np.ndarray, others: Sequence[np.ndarray], k: int = 2):
  """PCA (numpy SVD) fitted on flattened, standardised real series; projects real and others.

  real: float[N, T, C]; others: arrays [M_i, T, C]. Returns ([N, k], [[M_i, k]], explained
  variance ratios [k]).
  """
  fr, fill = _flat_filled(real)
  mu, sd = fr.mean(0), fr.std(0)
  sd = np.where(sd > 0, sd, 1.0)
  zr = (fr - mu) / sd
  _, s, vt = np.linalg.svd(zr, full_matrices=False)
  comps = vt[:k]
  evr = (s[:k] ** 2) / max(float(np.sum(s ** 2)), 1e-12)
  proj = [((_flat_filled(o, fill)[0] - mu) / sd) @ comps.T for o in others]
  return zr @ comps.T, proj, evr


def plot_pca(path: str | os.PathLike, real: np.ndarray, syn_by_method: Mapping[str, np.ndarray],
             max_points: int = 1000, tsne: bool = False, seed: int = 0,
             tsne_iter: int = 500) -> str:
  """Scatter of real vs each method's synthetic series on the real data's first 2 PCs.

  With `tsne=True` a second panel shows a joint t-SNE (sklearn, `tsne_iter` >= 250 iterations)
  of the subsampled points (each set capped at `max_points`).
  """
  rng = np.random.default_rng(seed)

  def sub(a):
    a = np.asarray(a)
    return a[rng.choice(len(a), max_points, replace=False)] if len(a) > max_points else a

  real = sub(real)
  syn = {m: sub(a) for m, a in syn_by_method.items()}
  pr, ps, evr = pca_project(real, list(syn.values()))
  ncol = 2 if tsne else 1
  fig = Figure(figsize=(5.2 * ncol, 4.4))
  axes = fig.subplots(1, ncol, squeeze=False)[0]
  ax = axes[0]
  ax.scatter(pr[:, 0], pr[:, 1], s=6, alpha=0.5, label="real", color="k")
  for m, p in zip(syn, ps):
    ax.scatter(p[:, 0], p[:, 1], s=6, alpha=0.5, label=m)
  ax.set_xlabel(f"PC1 ({100 * evr[0]:.0f}% of real variance)")
  ax.set_ylabel(f"PC2 ({100 * evr[1]:.0f}%)" if len(evr) > 1 else "PC2")
  ax.set_title("PCA fitted on real")
  ax.legend(fontsize=7, markerscale=2)
  if tsne:
    from sklearn.manifold import TSNE
    blocks = [real] + list(syn.values())
    flat = np.concatenate([_flat_filled(b)[0] for b in blocks])
    perplexity = float(min(30.0, max(2.0, (len(flat) - 1) / 3.0)))
    # scikit-learn < 1.5 calls the iteration count `n_iter`.
    it = "max_iter" if "max_iter" in inspect.signature(TSNE).parameters else "n_iter"
    emb = TSNE(2, perplexity=perplexity, init="pca", random_state=seed, n_jobs=1,
               **{it: int(tsne_iter)}).fit_transform(flat)
    start = 0
    for name, b in zip(["real"] + list(syn), blocks):
      e = emb[start:start + len(b)]
      start += len(b)
      axes[1].scatter(e[:, 0], e[:, 1], s=6, alpha=0.5, label=name,
                      color="k" if name == "real" else None)
    axes[1].set_title("t-SNE (joint)")
    axes[1].legend(fontsize=7, markerscale=2)
  return _save(fig, path)


def plot_tsrtr(path: str | os.PathLike, tsrtr_results: Mapping[str, Mapping[str, Mapping]],
               reference: Mapping | None = None, metrics: Sequence[str] = METRICS) -> str:
  """Metric vs alpha, one line per method, error bars = std over seeds.

  tsrtr_results: {method: {"0.2": {"auroc", ..., optional "auroc_std" or "seeds"}, ...}}.
  reference: optional TRTR entry ({"auroc", ..., "seeds"}) drawn as a horizontal band.
  """
  fig = Figure(figsize=(4.2 * len(metrics), 3.6))
  axes = fig.subplots(1, len(metrics), squeeze=False)[0]
  for ax, metric in zip(axes, metrics):
    for method, by_alpha in tsrtr_results.items():
      alphas = sorted(by_alpha, key=float)
      ms = np.array([metric_mean_std(by_alpha[a], metric)[:2] for a in alphas])
      ax.errorbar([float(a) for a in alphas], ms[:, 0], yerr=ms[:, 1], marker="o", ms=3,
                  capsize=3, label=method)
    if reference is not None:
      m, s, _ = metric_mean_std(reference, metric)
      ax.axhline(m, color="k", ls=":", lw=1, label="real only (TRTR)")
      if s > 0:
        ax.axhspan(m - s, m + s, color="k", alpha=0.08)
    ax.set_xlabel("alpha (synthetic / real train)")
    ax.set_title(metric.upper() if metric != "minority_f1" else "minority F1")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7)
  return _save(fig, path)


def plot_scale_sweep(path: str | os.PathLike, sweep_rows: Sequence[Mapping],
                     metrics: Sequence[str] = ("auroc", "auprc"),
                     selected: float | None = None, selected_filter: str | None = None) -> str:
  """Validation metric vs guidance scale w (symlog axis; w = 0 is unguided), one line per
  metric and class filter of G when the rows hold several ("class_filter"; the w = 0 row, the
  unguided set, starts every line).

  sweep_rows: [{"scale": w, "auprc": ..., optional "auprc_std" or "seeds", "class_filter"}, ...].
  """
  rows = sorted(sweep_rows, key=lambda r: float(r["scale"]))
  if not rows:
    raise ValueError("plot_scale_sweep: sweep_rows is empty.")
  metrics = [m for m in metrics if m in rows[0]]
  if not metrics:
    raise ValueError("plot_scale_sweep: rows hold none of the requested metrics.")
  w = np.array([float(r["scale"]) for r in rows])
  filters = list(dict.fromkeys(r.get("class_filter", "all") for r in rows if float(r["scale"])))
  fig = Figure(figsize=(5.0, 3.6))
  ax = fig.subplots()
  for f in filters or ["all"]:
    line = [r for r in rows if not float(r["scale"]) or r.get("class_filter", "all") == f]
    lw = np.array([float(r["scale"]) for r in line])
    for metric in metrics:
      ms = np.array([metric_mean_std(r, metric)[:2] for r in line])
      label = metric if len(filters) < 2 else f"{metric}, G over {f}"
      ax.errorbar(lw, ms[:, 0], yerr=ms[:, 1], marker="o", ms=3, capsize=3, label=label)
  if selected is not None:
    what = f"selected w={selected:g}" + (f" ({selected_filter})" if len(filters) > 1 else "")
    ax.axvline(float(selected), color="k", ls=":", lw=1, label=what)
  positive = np.abs(w[w != 0])
  ax.set_xscale("symlog", linthresh=float(positive.min()) if positive.size else 1.0)
  ax.set_xlabel("guidance scale w")
  ax.set_ylabel("validation metric")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  return _save(fig, path)


def plot_grad_norms(path: str | os.PathLike, grad_norms: Mapping[str, object]) -> str:
  """Bar chart of guidance-gradient norms by class, error bars = std.

  grad_norms: {class: {"mean", "std"}} or {class: array of per-sample norms}.
  """
  names, means, stds = [], [], []
  for name, v in grad_norms.items():
    if isinstance(v, Mapping):
      m, s = float(v["mean"]), float(v["std"])
    else:
      a = np.asarray(v, np.float64)
      m, s = float(a.mean()), float(a.std())
    names.append(str(name))
    means.append(m)
    stds.append(s)
  if not names:
    raise ValueError("plot_grad_norms: grad_norms is empty.")
  fig = Figure(figsize=(1.2 * len(names) + 2.5, 3.4))
  ax = fig.subplots()
  ax.bar(names, means, yerr=stds, capsize=4, color=[f"C{i}" for i in range(len(names))])
  ax.set_ylabel("guidance gradient norm")
  ax.set_xlabel("class")
  ax.grid(axis="y", alpha=0.3)
  return _save(fig, path)


def plot_curves(path: str | os.PathLike, curves: Mapping[str, Mapping[str, Sequence[float]]],
                grid: Sequence[float], title: str = "") -> str:
  """Test ROC and precision-recall curves, one line per method.

  curves: {method: {"tpr": true-positive rates at the false-positive rates `grid`,
  "precision": interpolated precision at the recalls `grid`}} (e.g. seed-averaged curves of
  `tardiff_jax.evaluation.downstream`).
  """
  if not curves:
    raise ValueError("plot_curves: no curves.")
  grid = np.asarray(grid, np.float64)
  fig = Figure(figsize=(9.0, 4.0))
  roc, pr = fig.subplots(1, 2)
  for i, (name, c) in enumerate(curves.items()):
    style = {"color": "k", "ls": ":"} if name.startswith("real") else {"color": f"C{i}"}
    roc.plot(grid, np.asarray(c["tpr"]), lw=1.2, label=name, **style)
    pr.plot(grid, np.asarray(c["precision"]), lw=1.2, label=name, **style)
  roc.plot([0, 1], [0, 1], color="0.7", lw=0.8)
  roc.set(xlabel="false-positive rate", ylabel="true-positive rate", title="ROC")
  pr.set(xlabel="recall", ylabel="precision (interpolated)", title="Precision-recall")
  for ax in (roc, pr):
    ax.grid(alpha=0.3)
  pr.legend(fontsize=7)
  if title:
    fig.suptitle(title, fontsize=9)
  return _save(fig, path)
