"""Per-example gradient norms: closed form for logistic regression, a per-example loop for a
real classifier."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tardiff_jax.evaluation import grad_norms
from tardiff_jax.models.classifier import ClassifierConfig, make_classifier


def _logistic_loss(params, x, y):
  z = jnp.sum(params["w"] * x) + params["b"]
  return optax.sigmoid_binary_cross_entropy(z, y.astype(z.dtype))


def test_closed_form_logistic():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(11, 3, 2)).astype(np.float32)
  y = (rng.random(11) < 0.4).astype(np.int32)
  params = {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32), "b": jnp.float32(0.3)}
  norms = grad_norms.per_example_grad_norms(_logistic_loss, params, x, y, batch_size=4)
  # d/dw = (sigmoid(z) - y) x, d/db = sigmoid(z) - y  =>  |s - y| sqrt(|x|^2 + 1).
  z = (x * np.asarray(params["w"])).sum((1, 2)) + 0.3
  expect = np.abs(1 / (1 + np.exp(-z)) - y) * np.sqrt((x ** 2).sum((1, 2)) + 1)
  np.testing.assert_allclose(norms, expect, rtol=1e-5)
  stats = grad_norms.grad_norm_stats(_logistic_loss, params, x, y, batch_size=4)
  for k in (0, 1):
    assert stats[str(k)]["mean"] == pytest.approx(expect[y == k].mean(), rel=1e-5)
    assert stats[str(k)]["std"] == pytest.approx(expect[y == k].std(), rel=1e-4)
    assert stats[str(k)]["count"] == int((y == k).sum())


def test_matches_per_example_loop_on_gru():
  clf = make_classifier(ClassifierConfig(model="gru", T=6, C=2, gru_hidden=3, gru_num_layers=1))
  params = clf.init(jax.random.PRNGKey(0), 6, 2)
  rng = np.random.default_rng(1)
  x = rng.normal(size=(7, 6, 2)).astype(np.float32)
  y = np.array([0, 1, 0, 0, 1, 0, 1], np.int32)
  norms = grad_norms.per_example_grad_norms(clf.loss_fn, params, x, y, batch_size=3)
  grad = jax.jit(jax.grad(clf.loss_fn))
  loop = []
  for i in range(7):
    g = grad(params, jnp.asarray(x[i]), jnp.asarray(y[i]))
    loop.append(np.sqrt(sum(float(np.sum(np.asarray(a, np.float64) ** 2))
                            for a in jax.tree_util.tree_leaves(g))))
  np.testing.assert_allclose(norms, loop, rtol=1e-4)


def test_bad_input():
  with pytest.raises(ValueError, match="batch_size"):
    grad_norms.per_example_grad_norms(_logistic_loss, {}, np.zeros((2, 3, 2)), np.zeros(2), 0)
  with pytest.raises(ValueError, match="labels of grad norms"):
    grad_norms.per_example_grad_norms(_logistic_loss, {}, np.zeros((2, 3, 2)), np.zeros(3), 2)
