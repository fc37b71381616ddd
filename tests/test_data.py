"""Data layer: Dataset contract, loaders (npz, pickle opt-in), bad-input errors, splits,
normalisers and the data stage. numpy only (no JAX)."""

from __future__ import annotations

import dataclasses
import json
import pickle

import numpy as np
import pytest

from tardiff_jax import io as tio
from tardiff_jax.config import experiment_config, from_mapping, load_config
from tardiff_jax.data import (
  DataConfig,
  DataError,
  Dataset,
  SimulatorConfig,
  Splits,
  interpolate_missing,
  load_dataset,
  make_normalizer,
  normalizer_from_dict,
  prepare_data,
  split_guidance,
  stratified_split,
  stratified_split_indices,
)

N, T, C = 200, 6, 3


def _arrays(n=N, t=T, c=C, seed=0, pos=0.2):
  rng = np.random.default_rng(seed)
  x = (rng.normal(size=(n, t, c)) * np.arange(1, c + 1) + 10 * np.arange(c)).astype(np.float32)
  y = (rng.uniform(size=n) < pos).astype(np.int64)
  y[:3], y[3:6] = 0, 1  # Both classes present.
  mask = rng.uniform(size=(n, t, c)) > 0.2
  return x, y, mask


@pytest.fixture(scope="module")
def ds():
  x, y, mask = _arrays()
  return Dataset(x=np.where(mask, x, np.nan), y=y, mask=mask, name="toy")


# ------------------------------------------------------------------------------ Dataset
def test_dataset_contract(ds):
  assert ds.x.dtype == np.float32 and ds.y.dtype == np.int32 and ds.mask.dtype == np.bool_
  assert (len(ds), ds.T, ds.C, ds.num_classes) == (N, T, C, 2)
  assert ds.channel_names == ("ch0", "ch1", "ch2") and ds.class_names == ("0", "1")
  np.testing.assert_array_equal(ds.class_counts(), np.bincount(ds.y))
  sub = ds.subset([5, 0, 7])
  np.testing.assert_array_equal(sub.y, ds.y[[5, 0, 7]])
  assert sub.channel_names == ds.channel_names and len(sub) == 3


def test_dataset_nan_means_missing_and_mask_excludes_nan():
  x, y, _ = _arrays()
  x[0, 0, 0] = np.nan
  d = Dataset(x=x, y=y)
  assert not d.mask[0, 0, 0] and d.mask.sum() == x.size - 1
  d2 = Dataset(x=x, y=y, mask=np.ones(x.shape, bool))  # A NaN is never observed.
  assert not d2.mask[0, 0, 0]


def test_dataset_errors():
  x, y, mask = _arrays()
  with pytest.raises(DataError, match="rank 3"):
    Dataset(x=x[:, :, 0], y=y)
  with pytest.raises(DataError, match="samples"):
    Dataset(x=x, y=y[:-1])
  with pytest.raises(DataError, match="mask"):
    Dataset(x=x, y=y, mask=mask[:, :-1])
  with pytest.raises(DataError, match="inf"):
    Dataset(x=np.where(mask, x, np.inf), y=y)
  with pytest.raises(DataError, match="channel names"):
    Dataset(x=x, y=y, channel_names=("a",))
  with pytest.raises(DataError, match="negative"):
    Dataset(x=x, y=-y)


# ------------------------------------------------------------------------------ loaders
def test_load_npz_plain(tmp_path):
  x, y, mask = _arrays()
  p = tmp_path / "d.npz"
  tio.write_npz(p, x=x, y=y, mask=mask, channel_names=np.array(["HR", "SBP", "RR"]),
                class_names=np.array(["alive", "dead"]))
  d = load_dataset(p)
  assert isinstance(d, Dataset) and d.name == "d"
  np.testing.assert_array_equal(d.x, x)
  np.testing.assert_array_equal(d.y, y)
  np.testing.assert_array_equal(d.mask, mask)
  assert d.channel_names == ("HR", "SBP", "RR") and d.class_names == ("alive", "dead")


def test_load_npz_nan_without_mask(tmp_path):
  x, y, mask = _arrays()
  p = tmp_path / "nan.npz"
  tio.write_npz(p, x=np.where(mask, x, np.nan), y=y)
  np.testing.assert_array_equal(load_dataset(p).mask, mask)


def test_load_npz_presplit(tmp_path):
  arrays = {}
  for i, s in enumerate(("train", "val", "test")):
    x, y, mask = _arrays(n=40 + 10 * i, seed=i)
    arrays.update({f"x_{s}": x, f"y_{s}": y, f"mask_{s}": mask})
  p = tmp_path / "pre.npz"
  tio.write_npz(p, **arrays)
  sp = load_dataset(p)
  assert isinstance(sp, Splits)
  assert (len(sp.train), len(sp.val), len(sp.test)) == (40, 50, 60)
  np.testing.assert_array_equal(sp.val.x, arrays["x_val"])
  np.testing.assert_array_equal(sp.test.mask, arrays["mask_test"])


def test_pickle_refused_without_opt_in(tmp_path):
  x, y, _ = _arrays()
  p = tmp_path / "ref.pkl"
  with open(p, "wb") as f:
    pickle.dump((x, y), f)
  with pytest.raises(DataError) as e:
    load_dataset(p)
  msg = str(e.value)
  assert str(p) in msg and "arbitrary code" in msg and "npz" in msg and "allow_pickle" in msg


def test_pickle_opt_in(tmp_path):
  x, y, _ = _arrays()
  p = tmp_path / "ref.pkl"
  with open(p, "wb") as f:
    pickle.dump((x, y.astype(np.float64)), f)  # The reference code's float labels are fine.
  d = load_dataset(p, allow_pickle=True)
  np.testing.assert_array_equal(d.x, x)
  np.testing.assert_array_equal(d.y, y)
  assert d.y.dtype == np.int32 and d.mask.all()


def _write_npz(tmp_path, name, **arrays):
  p = tmp_path / name
  tio.write_npz(p, **arrays)
  return p


@pytest.mark.parametrize("case, pattern", [
    ("rank", r"'x'.*rank 3"),
    ("y_rank", r"'y'.*rank 1"),
    ("nan_labels", r"'y'.*NaN labels"),
    ("float_labels", r"'y'.*non-integer"),
    ("single_class", r"'y'.*single class"),
    ("missing_y", r"expected arrays 'x' and 'y'"),
    ("empty", r"'x'.*empty"),
    ("mask_shape", r"'mask'.*shape"),
])
def test_npz_bad_input(tmp_path, case, pattern):
  x, y, mask = _arrays()
  arrays = {"x": x, "y": y}
  if case == "rank":
    arrays["x"] = x[..., 0]
  elif case == "y_rank":
    arrays["y"] = np.stack([y, y], 1)
  elif case == "nan_labels":
    arrays["y"] = np.where(np.arange(N) == 4, np.nan, y)
  elif case == "float_labels":
    arrays["y"] = y + 0.5
  elif case == "single_class":
    arrays["y"] = np.zeros_like(y)
  elif case == "missing_y":
    del arrays["y"]
  elif case == "empty":
    arrays = {"x": x[:0], "y": y[:0]}
  elif case == "mask_shape":
    arrays["mask"] = mask[:, 1:]
  p = _write_npz(tmp_path, f"{case}.npz", **arrays)
  with pytest.raises(DataError, match=pattern) as e:
    load_dataset(p)
  assert str(p) in str(e.value)


@pytest.mark.parametrize("case, pattern", [
    ("T", r"'x_val' has T=5, C=3 but 'x_train' has T=6, C=3"),
    ("C", r"'x_test' has T=6, C=2 but 'x_train' has T=6, C=3"),
    ("empty", r"'x_val' is empty"),
    ("missing", r"lacks arrays \['y_test'\]"),
    ("single_class", r"'y_val'.*single class"),
])
def test_presplit_bad_input(tmp_path, case, pattern):
  arrays = {}
  for i, s in enumerate(("train", "val", "test")):
    x, y, _ = _arrays(n=30, seed=i)
    arrays.update({f"x_{s}": x, f"y_{s}": y})
  if case == "T":
    arrays["x_val"] = arrays["x_val"][:, :5]
  elif case == "C":
    arrays["x_test"] = arrays["x_test"][:, :, :2]
  elif case == "empty":
    arrays["x_val"], arrays["y_val"] = arrays["x_val"][:0], arrays["y_val"][:0]
  elif case == "missing":
    del arrays["y_test"]
  elif case == "single_class":
    arrays["y_val"] = np.ones_like(arrays["y_val"])
  p = _write_npz(tmp_path, f"pre_{case}.npz", **arrays)
  with pytest.raises(DataError, match=pattern) as e:
    load_dataset(p)
  assert str(p) in str(e.value)


def test_file_not_what_extension_says(tmp_path):
  x, y, _ = _arrays()
  text = tmp_path / "text.npz"
  text.write_text("this is not a zip")
  with pytest.raises(DataError, match="not a valid .npz"):
    load_dataset(text)
  pkl_as_npz = tmp_path / "pickled.npz"
  with open(pkl_as_npz, "wb") as f:
    pickle.dump((x, y), f)
  with pytest.raises(DataError, match="looks like a pickle"):
    load_dataset(pkl_as_npz)
  npz_as_pkl = tmp_path / "zipped.pkl"
  tio.write_npz(tmp_path / "z.npz", x=x, y=y)
  npz_as_pkl.write_bytes((tmp_path / "z.npz").read_bytes())
  with pytest.raises(DataError, match="is a zip file"):
    load_dataset(npz_as_pkl, allow_pickle=True)
  bad_pkl = tmp_path / "bad.pkl"
  bad_pkl.write_bytes(b"garbage")
  with pytest.raises(DataError, match="not a readable pickle"):
    load_dataset(bad_pkl, allow_pickle=True)
  with pytest.raises(DataError, match="unsupported extension"):
    load_dataset(text.rename(tmp_path / "data.csv"))
  with pytest.raises(DataError, match="not found"):
    load_dataset(tmp_path / "nope.npz")


def test_pickle_bad_content(tmp_path):
  x, y, _ = _arrays()
  p = tmp_path / "three.pkl"
  with open(p, "wb") as f:
    pickle.dump((x, y, y), f)
  with pytest.raises(DataError, match="length 3"):
    load_dataset(p, allow_pickle=True)
  with open(p, "wb") as f:
    pickle.dump((x[..., 0], y), f)
  with pytest.raises(DataError, match=r"'data'.*rank 3"):
    load_dataset(p, allow_pickle=True)
  with open(p, "wb") as f:
    pickle.dump((x, np.where(np.arange(N) == 0, np.nan, y)), f)
  with pytest.raises(DataError, match=r"'labels'.*NaN"):
    load_dataset(p, allow_pickle=True)


def test_npz_object_array_never_unpickled(tmp_path):
  x, y, _ = _arrays()
  p = tmp_path / "obj.npz"
  np.savez(p, x=x, y=np.array([object()] * N, dtype=object))
  with pytest.raises(DataError, match="object array"):
    load_dataset(p)


# ------------------------------------------------------------------------------ splits
def test_stratified_split(ds):
  sp = stratified_split(ds, seed=0)
  tr, va, te = stratified_split_indices(ds.y, seed=0)
  assert len(np.intersect1d(tr, va)) == len(np.intersect1d(tr, te)) == 0
  assert len(np.intersect1d(va, te)) == 0
  np.testing.assert_array_equal(np.sort(np.concatenate([tr, va, te])), np.arange(N))
  counts = ds.class_counts()
  for part, frac in ((va, 0.1), (te, 0.1)):
    np.testing.assert_array_equal(np.bincount(ds.y[part], minlength=2),
                                  np.maximum(1, np.round(counts * frac)).astype(int))
  np.testing.assert_array_equal(sp.val.y, ds.y[va])
  np.testing.assert_array_equal(sp.test.x, ds.x[te])
  assert len(sp.train) == len(tr)


def test_split_determinism(ds):
  a = stratified_split_indices(ds.y, seed=3)
  b = stratified_split_indices(ds.y, seed=3)
  c = stratified_split_indices(ds.y, seed=4)
  for u, v in zip(a, b):
    np.testing.assert_array_equal(u, v)
  assert not np.array_equal(a[1], c[1])


def test_split_errors(ds):
  with pytest.raises(ValueError, match="sum below 1"):
    stratified_split(ds, 0, val_fraction=0.6, test_fraction=0.5)
  y = np.zeros(50, int)
  y[:2] = 1
  with pytest.raises(DataError, match="class 1 has only 2"):
    stratified_split_indices(y, 0)


def test_split_guidance(ds):
  val = stratified_split(ds, seed=0, val_fraction=0.3).val
  g, e = split_guidance(val, seed=0)
  assert len(g) + len(e) == len(val)
  for k in range(2):
    assert g.class_counts()[k] >= 1 and e.class_counts()[k] >= 1
    assert abs(g.class_counts()[k] - e.class_counts()[k]) <= 1
  rows = lambda d: {r.tobytes() for r in np.nan_to_num(d.x)}  # noqa: E731
  assert not rows(g) & rows(e)
  g2, _ = split_guidance(val, seed=0)
  np.testing.assert_array_equal(g.y, g2.y)
  np.testing.assert_array_equal(g.x, g2.x)
  with pytest.raises(ValueError, match="guide_fraction"):
    split_guidance(val, 0, guide_fraction=1.0)


# ------------------------------------------------------------------------------ normalisers
@pytest.mark.parametrize("kind", ["zscore", "minmax", "pit"])
def test_normalizer_round_trip(ds, kind):
  n = make_normalizer(kind).fit(ds)
  z = n.transform(ds.x, ds.mask)
  assert z.dtype == np.float32 and np.isfinite(z).all()
  assert (z[~ds.mask] == 0).all()  # Documented fill for missing values.
  back = n.inverse(z)
  span = np.nanmax(ds.x, (0, 1)) - np.nanmin(ds.x, (0, 1))
  tol = 1e-5 if kind != "pit" else 1e-4
  err = np.abs(back - np.nan_to_num(ds.x)) / span
  assert err[ds.mask].max() < tol
  # Restored from JSON, it is the same map.
  n2 = normalizer_from_dict(json.loads(json.dumps(n.to_dict())))
  np.testing.assert_array_equal(n2.transform(ds.x, ds.mask), z)
  np.testing.assert_array_equal(n2.inverse(z), back)


def test_zscore_and_minmax_closed_form(ds):
  zs = make_normalizer("zscore").fit(ds)
  obs = [ds.x[..., c][ds.mask[..., c]].astype(np.float64) for c in range(C)]
  np.testing.assert_allclose(zs.mean, [v.mean() for v in obs], rtol=1e-12)
  np.testing.assert_allclose(zs.std, [v.std() for v in obs], rtol=1e-12)
  z = zs.transform(ds.x, ds.mask)
  for c in range(C):
    np.testing.assert_allclose(z[..., c][ds.mask[..., c]].mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(z[..., c][ds.mask[..., c]].std(), 1.0, atol=1e-5)
  mm = make_normalizer("minmax").fit(ds)
  z = mm.transform(ds.x, ds.mask)
  assert np.isclose(z[ds.mask].min(), -1.0) and np.isclose(z[ds.mask].max(), 1.0)


def test_pit_closed_form():
  # Values 0..10 (each once): the ECDF knots are the values, so z = 2 x / 10 - 1.
  x = np.arange(11, dtype=np.float32).reshape(11, 1, 1)
  d = Dataset(x=x, y=np.r_[np.zeros(6), np.ones(5)].astype(int))
  n = make_normalizer("pit", num_quantiles=11).fit(d)
  np.testing.assert_allclose(n.transform(np.array([[[2.5]], [[7.0]]])).ravel(), [-0.5, 0.4],
                             atol=1e-6)
  np.testing.assert_allclose(n.transform(np.array([[[-5.0]], [[50.0]]])).ravel(), [-1.0, 1.0])
  np.testing.assert_allclose(n.inverse(np.array([[[0.0]]])).ravel(), [5.0])
  # Tied values (a discrete channel) still round-trip.
  xt = np.repeat(np.array([1.0, 2.0, 2.0, 2.0, 3.0], np.float32), 4).reshape(20, 1, 1)
  dt = Dataset(x=xt, y=np.arange(20) % 2)
  nt = make_normalizer("pit", num_quantiles=101).fit(dt)
  np.testing.assert_allclose(nt.inverse(nt.transform(xt)), xt, atol=1e-6)


def test_normalizer_fitted_on_train_only(ds):
  sp = stratified_split(ds, seed=0)
  n = make_normalizer("zscore").fit(sp.train)
  # Corrupting val/test cannot change the fit: it only ever sees train.
  sp_obs = [sp.train.x[..., c][sp.train.mask[..., c]].mean() for c in range(C)]
  np.testing.assert_allclose(n.mean, sp_obs, rtol=1e-6)
  all_obs = [ds.x[..., c][ds.mask[..., c]].mean() for c in range(C)]
  assert not np.allclose(n.mean, all_obs, rtol=1e-9)


def test_normalizer_errors(ds):
  with pytest.raises(ValueError, match="Unknown normalizer"):
    make_normalizer("robust")
  with pytest.raises(ValueError, match="not fitted"):
    make_normalizer("zscore").transform(ds.x)
  n = make_normalizer("minmax").fit(ds)
  with pytest.raises(DataError, match="3 channels"):
    n.transform(ds.x[..., :2])
  empty = Dataset(x=ds.x, y=ds.y, mask=np.zeros_like(ds.mask))
  with pytest.raises(DataError, match="no observed values"):
    make_normalizer("zscore").fit(empty)


# ------------------------------------------------------------------------------ data stage
def test_interpolate_missing_closed_form():
  nan = np.nan
  x = np.array([[1.0, nan, 3.0, nan, nan], [nan, 2.0, nan, nan, 8.0], [nan] * 5,
                [nan, nan, 5.0, nan, nan]], np.float32)[..., None]  # [4 stays, T=5, C=1]
  out = interpolate_missing(x, np.isfinite(x))
  np.testing.assert_allclose(out[..., 0], [[1, 2, 3, 3, 3], [2, 2, 4, 6, 8], [0] * 5, [5] * 5])
  assert out.dtype == np.float32
  # Channels are independent; a mask hides observed values too.
  x2 = np.stack([x[1, :, 0], x[0, :, 0]], axis=-1)[None]
  m2 = np.isfinite(x2)
  m2[0, 1, 0] = False  # hide the 2.0: channel 0 holds its only other observation, 8.0
  out2 = interpolate_missing(x2, m2)
  np.testing.assert_allclose(out2[0, :, 0], [8, 8, 8, 8, 8])
  np.testing.assert_allclose(out2[0, :, 1], [1, 2, 3, 3, 3])
  with pytest.raises(ValueError, match="one shape"):
    interpolate_missing(x, np.isfinite(x)[:2])


def test_data_config_validation():
  cfg = from_mapping(DataConfig, {"source": "simulator", "simulator": {"num_stays": 100}})
  assert cfg.simulator.num_stays == 100 and (cfg.val_fraction, cfg.test_fraction) == (0.1, 0.1)
  with pytest.raises(ValueError, match="unknown config field data.nm_stays"):
    from_mapping(DataConfig, {"nm_stays": 100}, "data.")
  with pytest.raises(ValueError, match="data.normalizer"):
    DataConfig(normalizer="robust")
  with pytest.raises(ValueError, match="data.path"):
    DataConfig(source="file")
  with pytest.raises(ValueError, match="data.simulator.label"):
    SimulatorConfig(label="los")
  with pytest.raises(ValueError, match="data.val_fraction"):
    DataConfig(val_fraction=0.6, test_fraction=0.5)


def test_prepare_data_default_config_section():
  cfg = experiment_config(load_config("tiny")).data
  p = prepare_data(cfg)
  info = p.info
  assert info["n_train"] + info["n_val"] + info["n_test"] == cfg.simulator.num_stays
  assert (info["T"], info["C"]) == (24, 7) and info["target_class"] == 1
  assert 0.0 < info["prevalence_train"] < 0.2 and 0.5 <= info["oracle_auroc"] <= 1.0
  for d, r in ((p.train, p.raw.train), (p.val, p.raw.val), (p.test, p.raw.test)):
    assert d.x.dtype == np.float32 and np.isfinite(d.x).all() and (d.x[~d.mask] == 0).all()
    np.testing.assert_array_equal(d.mask, r.mask)
    np.testing.assert_array_equal(d.y, r.y)
  assert len(p.guide_val) + len(p.eval_val) == len(p.val)
  ref = make_normalizer("zscore").fit(p.raw.train)
  np.testing.assert_array_equal(ref.mean, p.normalizer.mean)
  assert p.fingerprint("train") == prepare_data(cfg).fingerprint("train")
  assert p.fingerprint("train") != p.fingerprint("val")


def test_user_files_split_80_10_10_and_the_simulator_keeps_its_sizes(tmp_path):
  x, y, mask = _arrays(n=1000)
  path = tmp_path / "mine.npz"
  tio.write_npz(path, x=x, y=y, mask=mask)
  default = experiment_config(load_config("default")).data
  p = prepare_data(dataclasses.replace(default, source="file", path=str(path)))
  sizes = (p.info["n_train"], p.info["n_val"], p.info["n_test"])
  assert sizes == (800, 100, 100), sizes
  sim = prepare_data(dataclasses.replace(
      default, simulator=dataclasses.replace(default.simulator, num_stays=1000)))
  assert (sim.info["n_train"], sim.info["n_val"], sim.info["n_test"]) == (100, 200, 700)


def test_labels_are_checked_at_the_data_stage(tmp_path):
  x, y, _ = _arrays(n=300)
  y3 = np.where(y == 1, 2, y)  # Labels 0 and 2: class 1 has no example.
  path = tmp_path / "gap.npz"
  tio.write_npz(path, x=x, y=y3)
  with pytest.raises(DataError, match="class 1 .*no training examples"):
    prepare_data(DataConfig(source="file", path=str(path)))
  rng = np.random.default_rng(0)
  k3 = rng.choice(3, size=300, p=[0.6, 0.3, 0.1])
  path = tmp_path / "three.npz"
  tio.write_npz(path, x=x, y=k3)
  p = prepare_data(DataConfig(source="file", path=str(path)))
  assert p.num_classes == 3 and p.target_class == 2  # The rarest class.
  assert p.info["prevalence_train"] == pytest.approx(np.mean(p.train.y == 2))
  # A pre-split file whose test split lacks the target class (the rarest, 2).
  tr, va, te = stratified_split_indices(k3, 0, 0.1, 0.1)
  path = tmp_path / "nopos.npz"
  tio.write_npz(path, x_train=x[tr], y_train=k3[tr], x_val=x[va], y_val=k3[va], x_test=x[te],
                y_test=np.minimum(k3[te], 1))
  with pytest.raises(DataError, match="no example of the target class 2"):
    prepare_data(DataConfig(source="file", path=str(path)))


def test_prepare_data_from_file(tmp_path):
  x, y, mask = _arrays(n=300)
  path = tmp_path / "mine.npz"
  tio.write_npz(path, x=x, y=y, mask=mask)
  p = prepare_data(DataConfig(source="file", path=str(path), normalizer="pit"))
  assert p.info["name"] == "mine" and "oracle_auroc" not in p.info
  assert p.info["n_train"] + p.info["n_val"] + p.info["n_test"] == 300
  assert np.abs(p.train.x).max() <= 1.0
  back = p.normalizer.inverse(p.train.x)
  assert np.abs(back - np.nan_to_num(p.raw.train.x))[p.train.mask].max() < 1e-3 * 40


def test_prepare_data_long_stay_label():
  p = prepare_data(DataConfig(normalizer="minmax",
                              simulator=SimulatorConfig(num_stays=400, label="long_stay")))
  assert p.train.class_names == ("short", "long")
  assert 0.05 < p.info["prevalence_train"] < 0.25 and "oracle_auroc" in p.info
  assert np.abs(p.train.x).max() <= 1.0 + 1e-6
