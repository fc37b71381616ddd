"""Choosing guidance scales on evaluation-val: the rule, and what the choice may not see.

The guide classifier early-stops on guidance-val only; evaluation-val (which picks every guided
method's w) must not shape it. A run whose evaluation-val (and the full validation split that
holds it) is poisoned must train the identical guide."""

import dataclasses

import jax
import numpy as np
import pytest

from tardiff_jax.config import load_config
from tardiff_jax.experiment import Experiment, stages
from tardiff_jax.experiment.selection import choose_row, choose_scale
from tardiff_jax.influence.guidance import GuidanceConfig


def test_choose_scale_criteria_and_ties():
  rows = [{"scale": 0.0, "auprc": 0.30, "auroc": 0.80, "log_loss": 0.20},
          {"scale": 3.0, "auprc": 0.35, "auroc": 0.79, "log_loss": 0.22},
          {"scale": -1.0, "auprc": 0.35, "auroc": 0.81, "log_loss": 0.21},
          {"scale": 5.0, "auprc": 0.33, "auroc": 0.81, "log_loss": 0.19}]
  assert choose_scale(rows) == -1.0  # AUPRC tie between 3 and -1: the smaller |w|.
  assert choose_scale(rows, "auroc") == -1.0  # AUROC tie between -1 and 5: the smaller |w|.
  assert choose_scale(rows, "log_loss") == 5.0  # Log-loss is minimised.
  assert choose_scale([dict(r, auprc=0.3) for r in rows]) == 0.0


def test_choose_row_over_class_filters():
  rows = [{"scale": 0.0, "class_filter": "all", "auprc": 0.30},
          {"scale": 2.0, "class_filter": "all", "auprc": 0.34},
          {"scale": 1.0, "class_filter": "minority", "auprc": 0.36},
          {"scale": 2.0, "class_filter": "minority", "auprc": 0.34}]
  assert choose_row(rows)["class_filter"] == "minority" and choose_scale(rows) == 1.0
  rows[2]["auprc"] = 0.34  # A three-way tie: the smaller |w| wins.
  assert (choose_row(rows)["class_filter"], choose_row(rows)["scale"]) == ("minority", 1.0)
  rows[2]["scale"] = 2.0  # Same |w| too: the earlier row (all rows before minority).
  assert choose_row(rows) is rows[1]


def test_class_filter_options_are_checked():
  with pytest.raises(ValueError, match="class_filter='some'"):
    GuidanceConfig(class_filter="some")
  with pytest.raises(ValueError, match="minority_scale_grid"):
    GuidanceConfig(minority_scale_grid=(0.1, -1.0))
  assert GuidanceConfig().class_filter == "auto" and GuidanceConfig().fixed_filter == "all"
  assert GuidanceConfig(class_filter="minority").fixed_filter == "minority"


def _poisoned(data):
  """Evaluation-val with shuffled labels and noise for series; validation likewise (it holds
  evaluation-val); guidance-val and train untouched."""
  rng = np.random.default_rng(0)
  def spoil(ds):
    return dataclasses.replace(ds, y=rng.permutation(ds.y).astype(ds.y.dtype),
                               x=rng.normal(size=ds.x.shape).astype(ds.x.dtype))
  return dataclasses.replace(data, eval_val=spoil(data.eval_val), val=spoil(data.val))


def _guide(cfg, workdir, poison):
  with Experiment(cfg, workdir, quiet=True) as exp:
    data = exp.data
    if poison:
      exp.__dict__["data"] = _poisoned(data)
      assert exp.data.fingerprint("eval_val") != data.fingerprint("eval_val")
    return exp.guide


@pytest.fixture(scope="module")
def cfg():
  c = load_config("tiny")
  c.train_classifier.max_epochs = 4  # Enough epochs for early stopping to choose among.
  c.train_classifier.patience = 2
  return c


def test_guide_never_sees_evaluation_val(cfg, tmp_path, monkeypatch):
  clean = _guide(cfg, str(tmp_path / "clean"), poison=False)
  poisoned = _guide(cfg, str(tmp_path / "poisoned"), poison=True)
  assert poisoned.identity == clean.identity
  assert poisoned.history["best_epoch"] == clean.history["best_epoch"]
  jax.tree_util.tree_map(np.testing.assert_array_equal, poisoned.params, clean.params)
  # The check bites: a guide early-stopping on the whole validation split sees the poison.
  monkeypatch.setattr(stages, "GUIDE_STOP_SPLIT", "val")
  leaky = _guide(cfg, str(tmp_path / "leaky"), poison=True)
  assert leaky.identity != clean.identity


def test_class_balance_makes_the_scale_per_class(tmp_path):
  c = load_config("tiny")
  c.guidance.class_balance = True
  with Experiment(c, str(tmp_path), quiet=True) as exp:
    f = exp.class_factors("tardiff")
    d = exp.data
    assert f.shape == (d.num_classes,) and np.all(f > 0)
    np.testing.assert_allclose(np.asarray(exp.gparams("tardiff", 2.0)["scale"]), 2.0 * f,
                               rtol=1e-6)
    assert exp.class_factors("batch") is None and exp.class_factors("unguided") is None
    assert exp.synthetic_settings("tardiff", 2.0)["guidance"]["class_balance"] is True
    assert not np.allclose(exp.class_factors("classifier"), f)  # Its own score's norms.
  with Experiment(c, str(tmp_path), quiet=True) as exp:  # Read back from the store.
    np.testing.assert_array_equal(exp.class_factors("tardiff"), f)


def test_trajectory_epochs():
  from tardiff_jax.experiment.members import trajectory_epochs
  assert trajectory_epochs(9, 3) == [3, 6, 9]
  assert trajectory_epochs(2, 4) == [1, 2]
  assert trajectory_epochs(5, 1) == [5]
  with pytest.raises(ValueError):
    trajectory_epochs(0, 2)


def test_guide_ensemble_and_trajectory_stack(tmp_path):
  """guidance.ensemble = 2 x guidance.trajectory = 2: member 0 at its best epoch is the guide
  (same params, same G), every entry has its own G, tardiff's gparams carry the stack (the
  other methods keep the guide), and a guided set is drawn with it."""
  c = load_config("tiny")
  c.train_classifier.max_epochs = 3
  c.train_classifier.patience = 3
  c.guidance.gate_permutations = 0
  c.guidance.ensemble = 2
  c.guidance.trajectory = 2
  with Experiment(c, str(tmp_path), quiet=True) as exp:
    gm, guide = exp.guide_members, exp.guide
    best = guide.history["best_epoch"]
    assert {e["seed"] for e in gm.entries} == {c.seed, c.seed + 1}
    assert len(gm.entries) == len(gm.weights) <= 4 and np.isclose(gm.weights.sum(), 1.0)
    i = gm.entries.index({"seed": c.seed, "epoch": best})
    take = lambda tree: jax.tree_util.tree_map(lambda a: np.asarray(a[i]), tree)  # noqa: E731
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                           take(gm.params), guide.params)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8),
                           take(gm.G), exp.guidance_cache.G)
    norms = [float(np.sqrt(sum(np.sum(np.square(np.asarray(v[j])))
                               for v in jax.tree_util.tree_leaves(gm.G))))
             for j in range(len(gm.entries))]
    assert len(set(np.round(norms, 6))) == len(norms)  # each checkpoint its own G
    assert "weights" in exp.gparams("tardiff", 2.0)
    assert "weights" not in exp.gparams("classifier", 2.0)
    assert exp.synthetic_settings("tardiff", 2.0)["guidance"]["members"] == gm.identity
    syn = exp.synthetic("tardiff", scale=2.0)
    assert np.all(np.isfinite(syn.x)) and syn.x.shape[0] == len(exp.data.train)
  with Experiment(c, str(tmp_path), quiet=True) as exp:  # Read back from the store.
    assert exp.guide_members.entries == gm.entries
    np.testing.assert_array_equal(exp.guide_members.weights, gm.weights)
  with pytest.raises(ValueError, match="class_balance"):
    c2 = load_config("tiny")
    c2.guidance.ensemble = 2
    c2.guidance.class_balance = True
    Experiment(c2, str(tmp_path / "bad"), quiet=True)
