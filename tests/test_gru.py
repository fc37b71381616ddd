"""Bidirectional GRU classifier: against a NumPy PyTorch-equations reference (full backward pass,
`out[:, -1]`), shapes, batch independence, derivatives against finite differences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tardiff_jax.models.classifier import ClassifierConfig, make_classifier
from tests.test_timesnet import check_derivatives, random_params


def _sig(a):
  return 1.0 / (1.0 + np.exp(-a))


def _np_gru_dir(x, w_ih, w_hh, b_ih, b_hh):
  """PyTorch GRU, one direction, x: [T, D] -> outputs [T, H]."""
  hid = w_hh.shape[0]
  h = np.zeros(hid)
  outs = []
  for xt in x:
    gi, gh = xt @ w_ih + b_ih, h @ w_hh + b_hh
    r = _sig(gi[:hid] + gh[:hid])
    z = _sig(gi[hid:2 * hid] + gh[hid:2 * hid])
    n = np.tanh(gi[2 * hid:] + r * gh[2 * hid:])
    h = (1 - z) * n + z * h
    outs.append(h)
  return np.stack(outs)


def _np_reference(params, x, num_layers):
  """Full bidirectional stack, then out[-1] and the linear head. x: [T, C] -> [K]."""
  h = np.asarray(x, np.float64)
  for i in range(num_layers):
    p = {k: np.asarray(v, np.float64) for k, v in params[f"gru_{i}"].items()}
    fwd = _np_gru_dir(h, p["w_ih"][0], p["w_hh"][0], p["b_ih"][0], p["b_hh"][0])
    bwd = _np_gru_dir(h[::-1], p["w_ih"][1], p["w_hh"][1], p["b_ih"][1], p["b_hh"][1])[::-1]
    h = np.concatenate([fwd, bwd], axis=-1)
  head = params["head"]
  return h[-1] @ np.asarray(head["kernel"], np.float64) + np.asarray(head["bias"], np.float64)


@pytest.fixture(scope="module")
def binary():
  cfg = ClassifierConfig(model="gru", num_classes=2, T=24, C=3, gru_hidden=6, gru_num_layers=2)
  clf = make_classifier(cfg)
  return clf, clf.init(jax.random.key(0), 24, 3)


def test_matches_pytorch_equations_reference(binary):
  clf, params = binary
  x = jax.random.normal(jax.random.key(1), (3, 24, 3))
  logits = jax.jit(clf.logits_fn)(params, x)
  assert logits.shape == (3, 1)
  for i in range(3):
    np.testing.assert_allclose(logits[i], _np_reference(params, np.asarray(x[i]), 2),
                               rtol=1e-5, atol=1e-5)


def test_batch_independence(binary):
  clf, params = binary
  x = jax.random.normal(jax.random.key(2), (4, 24, 3))
  f = jax.jit(clf.logits_fn)
  logits = f(params, x)
  other = f(params, jnp.concatenate([x[2:3], 5.0 * x[:3]], axis=0))
  np.testing.assert_allclose(other[0], logits[2], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(f(params, x[1:2])[0], logits[1], rtol=1e-5, atol=1e-6)


def test_multiclass_three_layers_long_series():
  cfg = ClassifierConfig(model="gru", num_classes=4, T=288, C=3, gru_hidden=4, gru_num_layers=3)
  clf = make_classifier(cfg)
  params = random_params(clf.init, 3)
  x = jax.random.normal(jax.random.key(4), (2, 288, 3))
  probs = jax.jit(clf.predict_proba)(params, x)
  assert probs.shape == (2, 4)
  want = _np_reference(params, np.asarray(x[1]), 3)
  want = np.exp(want - want.max()) / np.exp(want - want.max()).sum()
  np.testing.assert_allclose(probs[1], want, rtol=1e-4, atol=1e-6)


def test_derivatives_match_finite_differences():
  cfg = ClassifierConfig(model="gru", num_classes=2, T=10, C=2, gru_hidden=4, gru_num_layers=2)
  clf = make_classifier(cfg)
  check_derivatives(clf.loss_fn, random_params(clf.init, 5), (10, 2), 6)
