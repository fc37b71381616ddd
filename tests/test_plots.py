"""Tests for the report figures: each writes a non-empty PNG, atomically."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tardiff_jax.evaluation import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_png(path):
  assert os.path.getsize(path) > 1000
  with open(path, "rb") as f:
    assert f.read(8) == PNG_MAGIC
  leftovers = [n for n in os.listdir(os.path.dirname(path)) if n.startswith(".tmp-")]
  assert not leftovers


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(40, 12, 3)).astype(np.float32)
  y = (np.arange(40) % 4 == 0).astype(np.int32)
  x[0, 2, 1] = np.nan
  return x, y


def test_traces(tmp_path, data):
  x, y = data
  p = plots.plot_traces(tmp_path / "traces.png", x, y, x + 1.0, y, ["hr", "sbp", "temp"],
                        ["survived", "died"], n=2)
  _check_png(p)
  with pytest.raises(ValueError, match="channel_names"):
    plots.plot_traces(tmp_path / "bad.png", x, y, x, y, ["hr"], ["a", "b"])


def test_pca_projection_and_plot(tmp_path, data):
  x, _ = data
  pr, (ps,), evr = plots.pca_project(x, [x])
  np.testing.assert_allclose(pr, ps, atol=1e-9)  # real projected twice: identical
  # Centred projections: the scores have zero mean and descending variance.
  np.testing.assert_allclose(pr.mean(0), 0.0, atol=1e-9)
  assert pr[:, 0].var() >= pr[:, 1].var() and 0 < evr.sum() <= 1
  _check_png(plots.plot_pca(tmp_path / "pca.png", x, {"unguided": x + 0.5, "tardiff": x * 2}))
  _check_png(plots.plot_pca(tmp_path / "tsne.png", x[:20], {"a": x[20:]}, tsne=True,
                                   tsne_iter=250))


def test_tsrtr(tmp_path):
  res = {m: {str(a): {"auroc": 0.7 + 0.1 * a, "auprc": 0.3 + o, "minority_f1": 0.2,
                      "seeds": [{"auroc": 0.7, "auprc": 0.3, "minority_f1": 0.2},
                                {"auroc": 0.8, "auprc": 0.35, "minority_f1": 0.25}]}
             for a in (0.2, 0.6, 1.0)} for m, o in (("unguided", 0.0), ("tardiff", 0.05))}
  ref = {"auroc": 0.75, "auprc": 0.3, "minority_f1": 0.2, "auroc_std": 0.01, "auprc_std": 0.01,
         "minority_f1_std": 0.0}
  _check_png(plots.plot_tsrtr(tmp_path / "tsrtr.png", res, reference=ref))


def test_scale_sweep_and_grad_norms(tmp_path):
  rows = [{"scale": w, "auroc": 0.7, "auprc": 0.3 + 1e-4 * w, "auprc_std": 0.01}
          for w in (0.0, 10.0, 100.0, 1000.0)]
  _check_png(plots.plot_scale_sweep(tmp_path / "sweep.png", rows, selected=100.0))
  _check_png(plots.plot_grad_norms(tmp_path / "g.png", {"0": {"mean": 1.0, "std": 0.2},
                                                         "1": np.array([2.0, 3.0, 4.0])}))
  with pytest.raises(ValueError, match="empty"):
    plots.plot_grad_norms(tmp_path / "g2.png", {})
