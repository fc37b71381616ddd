"""The classifier interface: config round trips and errors, per-example losses against closed
forms, vmap(loss_fn) against a loop, weighted batch loss, probabilities."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tardiff_jax.config import experiment_config, load_config
from tardiff_jax.models.classifier import (
  ClassifierConfig,
  ClassifiersConfig,
  TimesNetConfig,
  make_classifier,
)
from tests.test_timesnet import random_params


def test_section_spec_and_round_trip():
  section = experiment_config(load_config("default")).classifier
  cc = section.spec(2, 24, 7, model="timesnet", periods=[8, 6, 4])
  tn = section.timesnet
  assert (cc.model, cc.d_model, cc.d_ff, cc.e_layers, cc.top_k, cc.num_kernels) == (
      "timesnet", tn.d_model, tn.d_ff, tn.e_layers, tn.top_k, tn.num_kernels)
  assert cc.periods == (8, 6, 4) and cc.num_outputs == 1
  back = ClassifierConfig.from_dict(json.loads(json.dumps(cc.to_dict())))
  assert back == cc
  fixed = dataclasses.replace(section, timesnet=dataclasses.replace(tn, periods=(12, 8, 6)))
  assert fixed.spec(3, 24, 7, model="timesnet").periods == (12, 8, 6)  # fixed in the config
  g = section.spec(3, 24, 7, model="gru")
  assert g.gru_hidden == section.gru.hidden and g.num_outputs == 3
  assert ClassifierConfig.from_dict(g.to_dict()) == g
  # The flat network spec takes its width defaults from the config section's.
  assert ClassifierConfig(model="gru").d_model == TimesNetConfig().d_model
  with pytest.raises(ValueError, match="classifier.model"):
    ClassifiersConfig(model="lstm")


@pytest.mark.parametrize("kw,match", [
    (dict(model="lstm"), "classifier.model"),
    (dict(num_classes=1), "num_classes"),
    (dict(periods=None), "periods"),
    (dict(periods=(8, 6)), "top_k"),
    (dict(d_model=5), "d_model"),
    (dict(dropout=1.0), "dropout"),
    (dict(model="gru", gru_hidden=0), "hidden"),
])
def test_config_errors(kw, match):
  base = dict(model="timesnet", num_classes=2, T=24, C=7, periods=(8, 6, 4))
  with pytest.raises(ValueError, match=match):
    ClassifierConfig(**{**base, **kw})


@pytest.fixture(scope="module", params=["timesnet", "gru"])
def tiny(request):
  cfg = ClassifierConfig(model=request.param, num_classes=2, T=12, C=2, periods=(6, 4), top_k=2,
                         d_model=4, d_ff=4, e_layers=1, num_kernels=2, gru_hidden=4)
  clf = make_classifier(cfg)
  return clf, clf.init(jax.random.key(0), 12, 2)


def test_losses_closed_form_and_vmap(tiny):
  clf, params = tiny
  x = jax.random.normal(jax.random.key(1), (5, 12, 2))
  y = jnp.array([0, 1, 1, 0, 1], jnp.int32)
  logits = np.asarray(jax.jit(clf.logits_fn)(params, x), np.float64)[:, 0]
  want = np.log1p(np.exp(-np.where(y == 1, logits, -logits)))  # BCE with logits
  per = jax.jit(jax.vmap(clf.loss_fn, (None, 0, 0)))(params, x, y)
  np.testing.assert_allclose(per, want, rtol=1e-5)
  loop = jax.jit(clf.loss_fn)
  np.testing.assert_allclose(per, [loop(params, x[i], y[i]) for i in range(5)], rtol=1e-6)
  w = jnp.array([1.0, 3.0, 3.0, 1.0, 3.0])
  bl = jax.jit(lambda p: clf.batch_loss_fn(p, x, y, w, train=False))(params)
  np.testing.assert_allclose(bl, np.mean(np.asarray(w) * want), rtol=1e-5)
  proba = jax.jit(clf.predict_proba)(params, x)
  assert proba.shape == (5,)
  np.testing.assert_allclose(proba, 1.0 / (1.0 + np.exp(-logits)), rtol=1e-5)


def test_multiclass_cross_entropy():
  cfg = ClassifierConfig(model="gru", num_classes=3, T=6, C=2, gru_hidden=3)
  clf = make_classifier(cfg)
  params = random_params(clf.init, 2)
  x = jax.random.normal(jax.random.key(3), (4, 6, 2))
  y = jnp.array([0, 2, 1, 2], jnp.int32)
  logits = np.asarray(clf.logits_fn(params, x), np.float64)
  lse = np.log(np.exp(logits).sum(-1))
  want = lse - logits[np.arange(4), np.asarray(y)]
  got = jax.vmap(clf.loss_fn, (None, 0, 0))(params, x, y)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(clf.batch_loss_fn(params, x, y), want.mean(), rtol=1e-5)


def test_training_loss_uses_dropout():
  cfg = ClassifierConfig(model="timesnet", num_classes=2, T=12, C=2, periods=(6,), top_k=1,
                         d_model=4, d_ff=4, e_layers=1, num_kernels=1, dropout=0.5)
  clf = make_classifier(cfg)
  params = random_params(clf.init, 4)
  x = jax.random.normal(jax.random.key(5), (8, 12, 2))
  y = jnp.ones(8, jnp.int32)
  f = jax.jit(lambda k: clf.batch_loss_fn(params, x, y, rngs=k))
  assert not np.isclose(f(jax.random.key(6)), f(jax.random.key(7)))
  with pytest.raises(ValueError, match="rngs"):
    clf.batch_loss_fn(params, x, y)
  with pytest.raises(ValueError, match="init"):
    clf.init(jax.random.key(0), 24, 2)
