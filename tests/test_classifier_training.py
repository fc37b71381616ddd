"""Classifier training: vmapped seeds = separate runs, early stopping on validation only,
loss goes down, checkpoint skip, and the fresh-classifier engine never learns from test."""

from __future__ import annotations

import dataclasses
import inspect

import jax
import numpy as np
import pytest

from tardiff_jax.evaluation import downstream
from tardiff_jax.models.classifier import ClassifierConfig, make_classifier
from tardiff_jax.training import classifier_trainer as ct
from tardiff_jax.training import minibatches as mb

T, C = 8, 2
CFG = ClassifierConfig(model="gru", T=T, C=C, gru_hidden=4, gru_num_layers=1)
TCFG = ct.TrainClassifierConfig(batch_size=64, max_epochs=8, patience=2, learning_rate=3e-2,
                                class_weighting=True)
SEEDS = (0, 1)  # Trained together (S=2) and one by one (S=1): the two compiled shapes used.


def _toy(n: int, seed: int):
  """Simulator-like toy: risk rises with the last hours of channel 0; ~20% positives."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, T, C)).astype(np.float32)
  score = 1.5 * x[:, -2:, 0].sum(1) + 0.5 * rng.normal(size=n)
  return x, (score > 2.0).astype(np.int32)


@pytest.fixture(scope="module")
def data():
  return _toy(230, 0), _toy(128, 1), _toy(128, 2)  # train (230: last batch padded), val, test


@pytest.fixture(scope="module")
def clf():
  return make_classifier(CFG)


@pytest.fixture(scope="module")
def runs(data, clf):
  (xt, yt), (xv, yv), _ = data
  multi = ct.train_classifier_seeds(clf, xt, yt, xv, yv, TCFG, SEEDS, quiet=True)
  singles = [ct.train_classifier_seeds(clf, xt, yt, xv, yv, TCFG, [s], quiet=True)
             for s in SEEDS]
  return multi, singles


def test_vmapped_seeds_equal_separate_runs(runs, data, clf):
  (multi_p, multi_h), singles = runs
  xv = data[1][0]
  p_multi = ct.predict_proba(clf, multi_p, xv, stacked=True)
  for i, (p1, h1) in enumerate(singles):
    np.testing.assert_allclose(p_multi[i], ct.predict_proba(clf, ct.unstack(p1, 0), xv),
                               atol=1e-5)
    assert multi_h[i]["best_epoch"] == h1[0]["best_epoch"]
    assert multi_h[i]["stopped_epoch"] == h1[0]["stopped_epoch"]
    np.testing.assert_allclose(multi_h[i]["val_auprc"], h1[0]["val_auprc"], atol=1e-5)
    np.testing.assert_allclose(multi_h[i]["train_loss"], h1[0]["train_loss"], rtol=1e-4)


def test_seeds_are_respected(runs, data, clf):
  _, singles = runs
  (xt, yt), (xv, yv), _ = data
  leaves = [jax.tree_util.tree_leaves(p) for p, _ in singles]
  assert not np.allclose(leaves[0][0], leaves[1][0])  # Different seeds, different models.
  again, _ = ct.train_classifier_seeds(clf, xt, yt, xv, yv, TCFG, [0], quiet=True)
  for a, b in zip(jax.tree_util.tree_leaves(again), leaves[0]):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # Same seed, same bytes.


def test_training_lowers_loss_and_learns(runs):
  (_, hists), _ = runs
  for h in hists:
    assert h["train_loss"][-1] < h["train_loss"][0]
    assert max(h["val_auroc"]) > 0.85
    assert h["best_val_auprc"] == max(h["val_auprc"])
    assert h["epochs_run"] <= TCFG.max_epochs


def test_early_stopping_reads_validation_labels(runs, data, clf):
  (xt, yt), (xv, yv), _ = data
  _, singles = runs
  true_h = singles[0][1][0]
  # Flipped validation labels: the model gets worse by that measure as it learns, so it stops
  # earlier, at another best epoch; same training data, so only validation can cause this.
  _, flipped = ct.train_classifier_seeds(clf, xt, yt, xv, 1 - yv, TCFG, [0], quiet=True)
  assert flipped[0]["train_loss"][0] == true_h["train_loss"][0]
  assert flipped[0]["best_epoch"] < true_h["best_epoch"]
  assert flipped[0]["stopped_epoch"] == flipped[0]["best_epoch"] + TCFG.patience
  assert flipped[0]["stopped_epoch"] != true_h["stopped_epoch"]
  # No function of the training API can even receive test data.
  for fn in (ct.train_classifier, ct.train_classifier_seeds):
    assert not any("test" in name for name in inspect.signature(fn).parameters)


def test_evaluate_fresh_never_learns_from_test(data):
  (xt, yt), (xv, yv), (xs, ys) = data
  a = downstream.evaluate_fresh(xt, yt, xv, yv, xs, ys, CFG, TCFG, seeds=[3, 4])
  # Poisoned test set: flipped labels. Training, stopping and thresholds must not move.
  b = downstream.evaluate_fresh(xt, yt, xv, yv, xs, 1 - ys, CFG, TCFG, seeds=[3, 4],
                                minority=a["minority_class"])
  for sa, sb in zip(a["seeds"], b["seeds"]):
    assert sa["seed"] == sb["seed"]
    assert sa["best_epoch"] == sb["best_epoch"] and sa["threshold"] == sb["threshold"]
    assert sa["val_auprc"] == sb["val_auprc"]
    assert sb["auroc"] == pytest.approx(1.0 - sa["auroc"])
  assert a["num_seeds"] == 2 and set(a["std"]) == set(downstream.METRIC_KEYS)
  assert a["auroc"] == pytest.approx(np.mean([s["auroc"] for s in a["seeds"]]))
  assert a["auroc"] > 0.75


def test_checkpoint_skip(tmp_path, data, clf):
  (xt, yt), (xv, yv), _ = data
  kw = dict(seed=0, checkpoint_dir=str(tmp_path / "ckpt"),
            metrics_path=str(tmp_path / "metrics.jsonl"), quiet=True)
  p1, h1 = ct.train_classifier(clf, xt, yt, xv, yv, TCFG, **kw)
  assert "restored" not in h1
  assert (tmp_path / "metrics.jsonl").exists()
  p2, h2 = ct.train_classifier(clf, xt, yt, xv, yv, TCFG, **kw)
  assert h2["restored"] and h2["best_epoch"] == h1["best_epoch"]
  for a, b in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p2)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  other = make_classifier(dataclasses.replace(CFG, gru_hidden=5))
  with pytest.raises(ValueError, match="other settings.*classifier_config.gru_hidden"):
    ct.train_classifier(other, xt, yt, xv, yv, TCFG, **kw)
  with pytest.raises(ValueError, match="other settings.*seed"):
    ct.train_classifier(clf, xt, yt, xv, yv, TCFG, **{**kw, "seed": 1})


def test_epoch_indices_cover_each_example_once():
  idx = mb.epoch_indices(7, 3, n=200, batch=64, steps=4)
  assert idx.shape == (4, 64)
  assert sorted(idx.reshape(-1)[:200].tolist()) == list(range(200))
  assert not np.array_equal(idx, mb.epoch_indices(7, 4, n=200, batch=64, steps=4))


def test_class_weights_balance_classes():
  y = np.array([0] * 8 + [1] * 2)
  w = mb.example_weights(y, True)
  assert w[y == 0].sum() == pytest.approx(w[y == 1].sum())
  assert w.sum() == pytest.approx(10.0)


def test_config_validation():
  import ml_collections

  from tardiff_jax.config import from_mapping
  sec = ml_collections.ConfigDict({"batch_size": 32, "max_epochs": 3, "patience": 1,
                                   "learning_rate": 1e-3, "class_weighting": True})
  cfg = from_mapping(ct.TrainClassifierConfig, sec)
  assert cfg.batch_size == 32 and cfg.class_weighting and cfg.eval_batch_size == 1024
  for bad in ({"batch_size": 0}, {"patience": 0}, {"learning_rate": -1.0},
              {"max_epochs": 0}):
    with pytest.raises(ValueError, match=next(iter(bad))):
      ct.TrainClassifierConfig(**bad)


def test_bad_inputs_raise(clf, data):
  (xt, yt), (xv, yv), _ = data
  with pytest.raises(ValueError, match="target class 1 and another"):
    ct.train_classifier_seeds(clf, xt, yt, xv, np.zeros_like(yv), TCFG, [0], quiet=True)
  with pytest.raises(ValueError, match="non-finite"):
    bad = xt.copy()
    bad[0, 0, 0] = np.nan
    ct.train_classifier_seeds(clf, bad, yt, xv, yv, TCFG, [0], quiet=True)
  with pytest.raises(ValueError, match="distinct"):
    ct.train_classifier_seeds(clf, xt, yt, xv, yv, TCFG, [1, 1], quiet=True)


def test_epoch_indices_wrap_when_the_epoch_is_longer_than_the_set():
  idx = mb.epoch_indices(7, 3, n=50, batch=64, steps=4, epoch_size=200)
  flat = idx.reshape(-1)[:200]
  assert sorted(flat[:50].tolist()) == list(range(50))  # First pass: a permutation.
  assert np.bincount(flat, minlength=50).tolist() == [4] * 50  # Four full passes.
  assert not np.array_equal(flat[:50], flat[50:100])  # Each pass reshuffled.
  # epoch_size = n is the plain one-pass epoch.
  np.testing.assert_array_equal(mb.epoch_indices(7, 3, 200, 64, 4, epoch_size=200),
                                mb.epoch_indices(7, 3, 200, 64, 4))


def test_subset_members_equal_training_on_their_rows_alone(data, clf):
  """A member of a group trains on its own rows only: it equals a run on those rows alone with
  the same epoch size, whatever the other members learn from."""
  (xt, yt), (xv, yv), _ = data
  a = np.arange(0, 150)
  b = np.arange(150, 230)  # Smaller set: wraps within each epoch.
  group_p, group_h = ct.train_classifier_seeds(
      clf, xt, yt, xv, yv, TCFG, [0, 0, 1], subsets=[a, b, b], epoch_size=150, quiet=True)
  alone_p, alone_h = ct.train_classifier_seeds(clf, xt[b], yt[b], xv, yv, TCFG, [0],
                                               epoch_size=150, quiet=True)
  p_group = ct.predict_proba(clf, group_p, xv, stacked=True)
  np.testing.assert_allclose(p_group[1], ct.predict_proba(clf, ct.unstack(alone_p, 0), xv),
                             atol=1e-5)
  assert group_h[1]["best_epoch"] == alone_h[0]["best_epoch"]
  np.testing.assert_allclose(group_h[1]["train_loss"], alone_h[0]["train_loss"], rtol=1e-4)
  assert group_h[1]["n_train"] == 80 and group_h[0]["n_train"] == 150
  assert not np.allclose(p_group[0], p_group[1])  # Different data, different model.
  assert not np.allclose(p_group[1], p_group[2])  # Same data, different seed.
  with pytest.raises(ValueError, match="subsets for"):
    ct.train_classifier_seeds(clf, xt, yt, xv, yv, TCFG, [0], subsets=[a, b], quiet=True)
  with pytest.raises(ValueError, match="distinct row"):
    ct.train_classifier_seeds(clf, xt, yt, xv, yv, TCFG, [0], subsets=[np.array([1, 1])],
                              quiet=True)


def test_evaluate_fresh_group_equals_one_set_at_a_time(data):
  (xt, yt), (xv, yv), (xs, ys) = data
  sets = [(xt[:115], yt[:115]), (xt[115:], yt[115:])]  # Equal sizes: same epoch either way.
  group = downstream.evaluate_fresh_group(sets, xv, yv, xs, ys, CFG, TCFG, seeds=[3, 4])
  for (x, y), g in zip(sets, group):
    alone = downstream.evaluate_fresh(x, y, xv, yv, xs, ys, CFG, TCFG, seeds=[3, 4])
    assert g["group_size"] == 4 and alone["group_size"] == 2
    for key in downstream.METRIC_KEYS:
      assert g[key] == pytest.approx(alone[key], abs=1e-4)
    assert [s["best_epoch"] for s in g["seeds"]] == [s["best_epoch"] for s in alone["seeds"]]


def test_member_labels_train_each_member_on_its_own_labels(data, clf):
  """`labels` gives each member its own labels for the same rows (the gate's permuted-label
  guides): the true labels reproduce plain training, permuted ones give another model."""
  (xt, yt), (xv, yv), _ = data
  plain, _ = ct.train_classifier_seeds(clf, xt, yt, xv, yv, TCFG, [0], quiet=True)
  perm = np.random.default_rng(0).permutation(yt)
  both, _ = ct.train_classifier_seeds(clf, xt, yt, xv, yv, TCFG, [0, 0], labels=[yt, perm],
                                      quiet=True)
  p_plain = ct.predict_proba(clf, plain, xv, stacked=True)[0]
  p_both = ct.predict_proba(clf, both, xv, stacked=True)
  np.testing.assert_allclose(p_both[0], p_plain, atol=1e-5)
  assert not np.allclose(p_both[1], p_plain, atol=1e-3)
  with pytest.raises(ValueError, match="label arrays"):
    ct.train_classifier_seeds(clf, xt, yt, xv, yv, TCFG, [0, 1], labels=[yt], quiet=True)


def test_also_score_rescores_the_same_models(data):
  """`also_score` scores the trained members on more splits: scoring the test split again
  reproduces each seed's test AUROC / AUPRC; log-loss is that of the same probabilities."""
  (xt, yt), (xv, yv), (xs, ys) = data
  sets = [(xt[:115], yt[:115]), (xt[115:], yt[115:])]
  plain = downstream.evaluate_fresh_group(sets, xv, yv, xs, ys, CFG, TCFG, seeds=[3, 4])
  group = downstream.evaluate_fresh_group(sets, xv, yv, xs, ys, CFG, TCFG, seeds=[3, 4],
                                          also_score={"again": (xs, ys), "val": (xv, yv)})
  assert all("also" not in g for g in plain)
  for g, p in zip(group, plain):
    again = g["also"]["again"]
    assert set(g["also"]) == {"again", "val"} and len(again["seeds"]) == 2
    for k in ("auroc", "auprc"):
      assert g[k] == pytest.approx(p[k], abs=1e-6)  # Scoring more splits changes nothing.
      assert again[k] == pytest.approx(g[k], abs=1e-4)
      for s, m in zip(g["seeds"], again["seeds"]):
        assert m[k] == pytest.approx(s[k], abs=1e-4)
    assert 0.0 < again["log_loss"] < 5.0
    assert again["log_loss"] == pytest.approx(np.mean([m["log_loss"] for m in again["seeds"]]))
