"""TSTR/TSRTR mixing: exact ratios, class proportions, seeds."""

import numpy as np
import pytest

from tardiff_jax.evaluation import protocols


def _data(n, pos, seed, t=4, c=2):
  rng = np.random.default_rng(seed)
  y = np.zeros(n, np.int32)
  y[:pos] = 1
  return rng.normal(size=(n, t, c)).astype(np.float32), y


@pytest.mark.parametrize("alpha", [0.2, 0.4, 0.6, 0.8, 1.0])
def test_mix_ratio_exact(alpha):
  xr, yr = _data(250, 20, 0)
  xs, ys = _data(300, 150, 1)
  x, y, n_syn = protocols.mix_real_synthetic(xr, yr, xs, ys, alpha, seed=3)
  assert n_syn == round(alpha * 250)
  assert x.shape == (250 + n_syn, 4, 2) and y.shape == (250 + n_syn,)
  np.testing.assert_array_equal(x[:250], xr)  # All real samples, unchanged, first.
  syn_y = y[250:]
  # The synthetic part keeps the synthetic class proportions (here 50/50) to the integer.
  assert abs(int(np.sum(syn_y == 1)) - n_syn / 2) <= 0.5
  # Every synthetic row is a distinct row of the synthetic set (no replacement).
  rows = {xs[i].tobytes() for i in range(len(xs))}
  drawn = [x[i].tobytes() for i in range(250, len(x))]
  assert all(r in rows for r in drawn) and len(set(drawn)) == len(drawn)


def test_mix_seeded():
  xr, yr = _data(50, 5, 0)
  xs, ys = _data(60, 10, 1)
  a = protocols.mix_real_synthetic(xr, yr, xs, ys, 0.6, seed=7)[0]
  b = protocols.mix_real_synthetic(xr, yr, xs, ys, 0.6, seed=7)[0]
  c = protocols.mix_real_synthetic(xr, yr, xs, ys, 0.6, seed=8)[0]
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_mix_refuses_small_pool_and_shape_mismatch():
  xr, yr = _data(100, 10, 0)
  xs, ys = _data(50, 25, 1)
  with pytest.raises(ValueError, match="generate more"):
    protocols.mix_real_synthetic(xr, yr, xs, ys, 1.0, seed=0)
  with pytest.raises(ValueError, match=r"\[T, C\]"):
    protocols.mix_real_synthetic(xr, yr, xs[:, :3], ys, 0.2, seed=0)


def test_exact_class_counts_largest_remainder():
  y = np.array([0] * 7 + [1] * 3)
  np.testing.assert_array_equal(protocols.exact_class_counts(y, 5), [4, 1])  # 3.5 / 1.5 -> 4/1
  np.testing.assert_array_equal(protocols.exact_class_counts(y, 10), [7, 3])
  assert protocols.exact_class_counts(y, 7).sum() == 7


def test_alpha_keys():
  assert [protocols.alpha_key(a) for a in (0.2, 1, 1.0, 0.25)] == ["0.2", "1.0", "1.0", "0.25"]
  with pytest.raises(ValueError):
    protocols.check_alphas([0.0, 1.0])


def test_impose_real_masks_takes_a_mask_of_the_same_class():
  rng = np.random.default_rng(0)
  T_, C_ = 5, 3
  mask_real = rng.random((12, T_, C_)) > 0.3
  y_real = np.array([0] * 8 + [1] * 4)
  mask_real[8:, :, 0] = False  # Class-1 stays never observe channel 0.
  x = rng.normal(size=(20, T_, C_)).astype(np.float32) + 5.0  # No natural zeros.
  y = np.array([0, 1] * 10)
  out = protocols.impose_real_masks(x, y, mask_real, y_real, seed=3)
  observed = out != 0.0
  np.testing.assert_array_equal(out[observed], x[observed])  # Kept entries are unchanged.
  for i in range(len(y)):
    pool = mask_real[y_real == y[i]]
    assert any(np.array_equal(observed[i], m) for m in pool), i
  assert not observed[y == 1][:, :, 0].any()
  np.testing.assert_array_equal(out, protocols.impose_real_masks(x, y, mask_real, y_real, 3))
  assert not np.array_equal(out, protocols.impose_real_masks(x, y, mask_real, y_real, 4))
  with pytest.raises(ValueError, match="class 2"):
    protocols.impose_real_masks(x, np.full(20, 2), mask_real, y_real, 3)
